"""The LightningModule of the bond model: ``DiffusionModule``'s training loop (optimizer, EMA,
non-finite skipping, per-step noise seeds, exact resume) around a ``BondDiffusionModel`` and its
``FieldLoss``; only the model, the loss and the batches (``MolState``) differ."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from moldiff.loss.fields import FieldLoss
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.state import MolState
from moldiff.train.module import DiffusionModule


class BondDiffusionModule(DiffusionModule):
    def __init__(self, model: dict[str, Any], noise: dict[str, Any], loss: dict[str, Any], features: dict[str, Any],
                 optim: dict[str, Any], size_histogram: dict[int, int], marginals: dict[str, list[float]],
                 ema_decay: float = 0.999, seed: int = 0, dataset: str = ""):
        pl.LightningModule.__init__(self)  # DiffusionModule's constructor builds the Gaussian model
        # given as a dict: Lightning's frame inspection would find the parent class's arguments
        self.save_hyperparameters(dict(model=model, noise=noise, loss=loss, features=features, optim=optim,
                                       size_histogram=size_histogram, marginals=marginals, ema_decay=ema_decay, seed=seed,
                                       dataset=dataset))
        self.model = BondDiffusionModel(model, noise, features, size_histogram, marginals, ema_decay,
                                        loss=loss, optim=optim, seed=seed, dataset=dataset)
        self.objective = field_loss(loss, self.model)
        self._tic = None
        self.skipped_batches = 0
        self._skip_update = False

    @property
    def context(self):
        return None

    @property
    def layout(self):
        raise AttributeError("the bond model has no Gaussian feature layout")

    def batch_loss(self, batch: MolState, ema: bool, generator) -> torch.Tensor:
        values, _ = self.objective(self.model.denoise_fn(ema), batch, generator)
        return values


def field_loss(loss: dict[str, Any], model: BondDiffusionModel) -> FieldLoss:
    h = int(model.vocab.encode(np.array([1]))[0])  # hydrogens follow their heavy atom into a random fragment
    return FieldLoss(model.sde, model.processes, loss.get("weights"), loss.get("time_weight", "snr_clip"),
                     tuple(loss.get("snr_clip", (0.05, 1.5))), float(loss.get("t_min", 1e-3)),
                     float(loss.get("self_condition", 0.5)), float(loss.get("fragment", 0.5)), h if h >= 0 else None)
