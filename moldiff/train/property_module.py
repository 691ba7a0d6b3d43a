"""The LightningModule that trains a ``PropertyModel`` (``moldiff.model.property``), in EEGSDE's two roles:

* ``role="guide"``: g(z_t, t), time-conditioned, trained on molecules noised by the diffusion's
  own VP process at uniform t (the guidance energy needs predictions on noisy molecules);
* ``role="evaluator"``: phi_c(x, h), trained on clean molecules only, EDM's protocol for scoring
  generated molecules.

``target`` is one property name or a list (one output column each, one shared encoder). The loss
is the mean squared error in normalised units ((y - mean) / std of the training set), averaged
over targets; validation reports the MAE in each property's units (clean always; noisy at uniform
t for a guide). The checkpoint's state dict is the ``PropertyModel``'s own (``net.*``), so
``PropertyModel.load`` reads training checkpoints too.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from moldiff.data.loader import MoleculeBatch
from moldiff.model.property import PropertyModel


class PropertyModule(pl.LightningModule):
    def __init__(self, target: str | list[str], role: str, model: dict[str, Any], noise: dict[str, Any], features: dict[str, Any],
                 optim: dict[str, Any], mean: float | list[float], std: float | list[float], seed: int = 0):
        super().__init__()
        self.model = PropertyModel(target, role, model, noise, features, mean, std, optim=optim, seed=seed)  # checks the role
        self.save_hyperparameters()

    # the model's parts, under the names the training steps and callbacks use
    @property
    def net(self):
        return self.model.net

    @property
    def layout(self):
        return self.model.layout

    @property
    def sde(self):
        return self.model.sde

    @property
    def targets(self) -> list[str]:
        return self.model.targets

    def column(self, name: str) -> int:
        return self.model.column(name)

    # --- the state dict is the PropertyModel's own (net.*): checkpoints of either read alike
    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def _log_mae(self, key: str, pred, y, n: int) -> None:
        mae = (pred - y.view(n, -1)).abs().mean(0)
        for name, value in zip(self.targets, mae):
            self.log(f"{key}_{name}" if len(self.targets) > 1 else key, value, batch_size=n, sync_dist=True,
                     prog_bar=key == "val/mae" and len(self.targets) == 1)

    def _inputs(self, batch: MoleculeBatch, generator, noisy: bool):
        n = batch.n_mol
        if not noisy:
            return batch.x, batch.h, torch.zeros(n, dtype=batch.x.dtype, device=batch.x.device)
        t = torch.rand(n, generator=generator, dtype=batch.x.dtype, device=batch.x.device)
        noisy, _ = self.sde.perturb(batch.state(), t, generator)
        return noisy.pos, noisy.atom_type, t

    def _generator(self, device, offset: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed((self.hparams.seed * 1_000_003 + offset) % (2**63))

    def training_step(self, batch: MoleculeBatch, batch_idx: int):
        loader = self.trainer.train_dataloader
        if hasattr(loader, "mark_trained"):
            loader.mark_trained(self.current_epoch, batch_idx + 1)
        x, h, t = self._inputs(batch, self._generator(batch.x.device, self.global_step * 64 + self.global_rank), self.hparams.role == "guide")
        target = (batch.y.view(batch.n_mol, -1) - self.net.mean) / self.net.std
        loss = (self.net(x, h, t, batch.batch, batch.n_mol) - target).square().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.n_mol)
        return loss

    def validation_step(self, batch: MoleculeBatch, batch_idx: int):
        g = self._generator(batch.x.device, 10_000_000 + batch_idx)
        x, h, t = self._inputs(batch, g, False)
        self._log_mae("val/mae", self.net.predict(x, h, t, batch.batch, batch.n_mol), batch.y, batch.n_mol)
        if self.hparams.role == "guide":
            x, h, t = self._inputs(batch, g, True)
            self._log_mae("val/mae_noisy", self.net.predict(x, h, t, batch.batch, batch.n_mol), batch.y, batch.n_mol)

    def configure_optimizers(self):
        o = self.hparams.optim
        opt = torch.optim.AdamW(self.net.parameters(), lr=float(o["lr"]), weight_decay=float(o.get("weight_decay", 0.0)))
        if not o.get("cosine", True):
            return opt
        # to zero over the run: trainer.max_steps when given (a budget in steps), else max_epochs
        steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        horizon = steps or self.trainer.max_epochs
        if horizon in (None, -1):
            return opt
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=horizon)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step" if steps else "epoch"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, MoleculeBatch) else super().transfer_batch_to_device(batch, device, dataloader_idx)
