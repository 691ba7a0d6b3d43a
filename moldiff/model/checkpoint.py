"""Checkpoint files: where the shipped model is, and reading and writing them safely.

A checkpoint is a plain dict (``state_dict`` of tensors, ``hyper_parameters`` and
``moldiff_record`` of plain containers), read with ``torch.load(weights_only=True)``: a file that
carries anything else (a pickled object that could run code) is refused before any of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from moldiff.io.writers import atomic_write

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "qm9_egnn.ckpt"
# The shipped property models (one multi-task network each for the six QM9 properties, trained on
# the first half of QM9 train): the time-conditioned guide g(z_t, t) and the clean evaluator phi_c.
SHIPPED_PROPERTY = {role: SHIPPED.parent / f"qm9_property_{role}.ckpt" for role in ("guide", "evaluator")}


def property_checkpoint_path(ckpt: str | Path, role: str) -> Path:
    """``"shipped"`` (the package's property model for ``role``) or a path; not checked to exist."""
    return SHIPPED_PROPERTY[role] if str(ckpt) == "shipped" else Path(ckpt)


def checkpoint_path(ckpt: str | Path) -> Path:
    """``"shipped"`` or a path, checked to exist."""
    path = SHIPPED if str(ckpt) == "shipped" else Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt: no checkpoint at {path}" + (" (the shipped model is missing from this install)" if str(ckpt) == "shipped" else ""))
    return path


def read_checkpoint(ckpt: str | Path, map_location="cpu") -> dict:
    path = checkpoint_path(ckpt)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: refused, it holds more than weights and plain configs (nothing in it was run): {e}") from None
    if not isinstance(data, dict) or not {"state_dict", "hyper_parameters"} <= set(data):
        raise ValueError(f"{path} is not a moldiff checkpoint (no state_dict / hyper_parameters)")
    if data.get("moldiff_compact"):
        data["state_dict"] = expand_compact(data["state_dict"])
    return data


def expand_compact(state: dict) -> dict:
    """A compact export (EMA weights only, float16; ``moldiff.train.export``) as a full state dict:
    float32, with the network's weights set to the EMA's."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    prefix = "ema.module."
    state.update({"net." + k[len(prefix):]: v.clone() for k, v in state.items() if k.startswith(prefix)})
    return state


def write_checkpoint(path: str | Path, data: dict) -> Path:
    """Atomically: an interrupted write leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(data, f)
    return path
