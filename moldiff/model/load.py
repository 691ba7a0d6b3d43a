"""One entry point for any diffusion checkpoint, by name or path: the coordinates-only
``DiffusionModel`` or the ``BondDiffusionModel``, whichever the file holds (safe-loaded)."""

from __future__ import annotations

from pathlib import Path

from moldiff.model.bond_model import BondDiffusionModel, is_bond_checkpoint
from moldiff.model.checkpoint import read_checkpoint
from moldiff.model.diffusion import DiffusionModel


def load_model(ckpt: str | Path = "shipped", device="cpu") -> DiffusionModel | BondDiffusionModel:
    data = read_checkpoint(ckpt)
    cls = BondDiffusionModel if is_bond_checkpoint(data) else DiffusionModel
    return cls.from_checkpoint(data).to(device).eval()


def model_vocabulary(model):
    """The element vocabulary of either model."""
    return model.vocab if isinstance(model, BondDiffusionModel) else model.layout.vocab
