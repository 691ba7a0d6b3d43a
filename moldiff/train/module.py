"""The LightningModule: a thin training wrapper around ``DiffusionModel`` (network, EMA, noise
process, features), trained with ``DiffusionLoss``.

Everything needed to rebuild the model travels in the checkpoint's hyperparameters (network,
noise, loss and feature configs, the training atom-count histogram), so ``load_from_checkpoint``
needs no config files. The checkpoint's state dict is the ``DiffusionModel``'s own (``net.*``,
``ema.*``), so ``DiffusionModel.load`` reads training checkpoints too. Training noise is drawn
from a generator seeded by (seed, global step, rank): a resumed run sees exactly the noise an
uninterrupted one would have.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import pytorch_lightning as pl
import torch

from moldiff.data.loader import MoleculeBatch
from moldiff.model import build
from moldiff.model.diffusion import DiffusionModel
from moldiff.state import MolState
from moldiff.train.active_clock import ActiveClock


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        noise: dict[str, Any],
        loss: dict[str, Any],
        features: dict[str, Any],
        optim: dict[str, Any],
        size_histogram: dict[int, int],
        ema_decay: float = 0.999,
        seed: int = 0,
        dataset: str = "",
        horizon: float = 1.0,
        context: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = DiffusionModel(model, noise, features, size_histogram, ema_decay, context, horizon,
                                    loss=loss, optim=optim, seed=seed, dataset=dataset)
        self.objective = build.loss(loss, self.model.sde, self.model.layout)
        self._tic = None
        self.skipped_batches = 0
        self._skip_update = False

    # the model's parts, under the names samplers and callbacks use
    @property
    def net(self):
        return self.model.net

    @property
    def ema(self):
        return self.model.ema

    @property
    def sde(self):
        return self.model.sde

    @property
    def layout(self):
        return self.model.layout

    @property
    def context(self):
        return self.model.context

    @property
    def horizon(self) -> float:
        return self.model.horizon

    @property
    def size_histogram(self) -> dict[int, int]:
        return self.model.size_histogram

    def eps_fn(self, ema: bool = True, context=None):
        return self.model.eps_fn(ema, context)

    # --- the state dict is the DiffusionModel's own (net.*, ema.*): checkpoints of either read alike
    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    # --- training -------------------------------------------------------------------------------
    def batch_loss(self, batch: MoleculeBatch, ema: bool, generator) -> torch.Tensor:
        """(M,) loss of a batch with the training (``ema=False``) or EMA network."""
        values, _ = self.objective(self.model.batch_eps_fn(ema, batch.y), batch.state(), generator)
        return values

    def _generator(self, device) -> torch.Generator:
        key = (self.hparams.seed * 1_000_003 + self.global_step) * 64 + self.global_rank
        return torch.Generator(device=device).manual_seed(key % (2**63))

    def training_step(self, batch: MoleculeBatch, batch_idx: int):
        # checkpoints saved at this batch's end (callbacks run before the module's own hooks) must
        # count it as trained: the loader resumes after it (see data/loader.py)
        loader = self.trainer.train_dataloader
        if hasattr(loader, "mark_trained"):
            loader.mark_trained(self.current_epoch, batch_idx + 1)
        loss = self.batch_loss(batch, False, self._generator(batch.batch.device)).mean()
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:  # under DDP all ranks skip together, or the gradient all-reduce would hang
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        self._skip_update = not finite
        if not finite:
            # skip the update and count it, rather than poison the weights. Returning None is not
            # allowed under DDP, so every rank backpropagates a zero through all parameters (the
            # gradient all-reduce stays in step) and the gradients are dropped before the optimizer
            self.skipped_batches += 1
            self.log("train/skipped_nonfinite", float(self.skipped_batches))
            return 0.0 * sum(p.sum() for p in self.net.parameters())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.n_mol)
        return loss

    def on_before_optimizer_step(self, optimizer):
        if self._skip_update:  # parameters without gradients are left alone by AdamW (no momentum, no decay)
            for p in self.net.parameters():
                p.grad = None

    def on_train_batch_start(self, batch, batch_idx):
        self._tic = time.perf_counter()

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if not self._skip_update:  # here, not in on_train_batch_end: checkpoints are saved before that
            self.model.update_ema()

    def on_train_batch_end(self, outputs, batch: MoleculeBatch, batch_idx: int):
        if self._tic is not None:
            world = self.trainer.world_size
            self.log("train/molecules_per_s", world * batch.n_mol / (time.perf_counter() - self._tic), batch_size=batch.n_mol)

    def validation_step(self, batch: MoleculeBatch, batch_idx: int):
        g = torch.Generator(device=batch.batch.device).manual_seed(10_000 + batch_idx)  # same noise every time
        # always in float32, also under precision=bf16-mixed: runs of either precision compare on one scale
        with torch.autocast(batch.batch.device.type, enabled=False):
            values = self.batch_loss(batch, True, g)
        self.log("val/loss", values.mean(), prog_bar=True, batch_size=batch.n_mol, sync_dist=True)

    def configure_optimizers(self):
        o = self.hparams.optim
        opt = torch.optim.AdamW(
            self.net.parameters(), lr=float(o["lr"]), weight_decay=float(o.get("weight_decay", 0.0)), amsgrad=bool(o.get("amsgrad", True))
        )
        decay = o.get("decay") or {}
        if decay.get("kind", "none") == "none":
            return opt
        factor = lr_factor(decay["kind"], int(decay["steps"]), float(decay.get("final", 0.1)), int(decay.get("warmup") or 0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, (MoleculeBatch, MolState)):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def lr_factor(kind: str, steps: int, final: float, warmup: int = 0):
    """The learning rate's factor at optimizer step k: from 1 down to ``final`` over ``steps`` steps
    (cosine or linear), then ``final``. Counted from this run's first step (a warm start's too).
    ``warmup`` > 0: the factor also rises linearly from 1/warmup over the first ``warmup`` steps, so
    a warm start's fresh optimizer (no moment estimates yet) does not take full-size first steps."""
    if kind not in ("cosine", "linear") or steps < 1 or not 0.0 <= final <= 1.0 or warmup < 0:
        raise ValueError(f"optim.decay: kind cosine|linear|none, steps >= 1, final in [0, 1], warmup >= 0; "
                         f"got {kind!r}, {steps}, {final}, {warmup}")

    def factor(k: int) -> float:
        u = min(k / steps, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * u)) if kind == "cosine" else 1.0 - u
        return (final + (1.0 - final) * shape) * min(1.0, (k + 1) / warmup if warmup else 1.0)

    return factor


class TrainingRecord(pl.Callback):
    """Keeps an honest account in every checkpoint: one entry per training session (hardware,
    first and last global step, epochs, wall time), carried over on resume and warm start. Time the
    process spent stopped (``kill -STOP``) is left out of ``seconds`` and shown as ``paused_s``."""

    def __init__(self, history: list | None = None, clock=ActiveClock):
        self.history = list(history or [])
        self._make_clock = clock  # called at train start for this session's clock (tests pass a fake one)
        self._clock = None
        self._entry = None

    def on_train_start(self, trainer, module):  # after a resumed checkpoint is restored
        device = "cpu: " + (platform.processor() or platform.machine()) + f" ({torch.get_num_threads()} threads)"
        if module.device.type == "cuda":
            device = "gpu: " + torch.cuda.get_device_name(module.device)
        self._stop_clock()  # a second fit with the same record starts a fresh clock
        self._clock = self._make_clock().start()
        self._entry = {"device": device, "world_size": trainer.world_size, "precision": str(trainer.precision),
                       "first_step": int(trainer.global_step), "seconds": 0.0}

    def _current(self, trainer) -> list:
        if self._entry is None:
            return self.history
        entry = dict(self._entry, last_step=int(trainer.global_step), epoch=int(trainer.current_epoch), seconds=round(self._clock.elapsed(), 1))
        if self._clock.paused:
            entry["paused_s"] = round(self._clock.paused, 1)
        return self.history + [entry]

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["moldiff_record"] = self._current(trainer)

    def teardown(self, trainer, module, stage=None):
        self._stop_clock()

    def _stop_clock(self):  # the clock's thread ends; its reading stays
        if self._clock is not None:
            self._clock.stop()

    def on_load_checkpoint(self, trainer, module, checkpoint):
        self.history = list(checkpoint.get("moldiff_record", []))
