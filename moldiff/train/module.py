"""The LightningModule: an epsilon network trained with ``DiffusionLoss``, with EMA weights.

Everything needed to rebuild the model travels in the checkpoint's hyperparameters (network,
noise, loss and feature configs, the training atom-count histogram), so ``load_from_checkpoint``
needs no config files. Training noise is drawn from a generator seeded by (seed, global step,
rank): a resumed run sees exactly the noise an uninterrupted one would have.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from moldiff.data.loader import MoleculeBatch
from moldiff.train import build
from moldiff.train.conditioning import Context, ContextSlot, conditioned


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
        self.layout = build.feature_layout(features)
        self.context = Context.from_dict(context)  # None: unconditional; else EDM-style conditioning
        self.net = build.network(model, self.layout.dim, len(self.context.names) if self.context else 0)
        self.sde = build.sde(noise)
        self.objective = build.loss(loss, self.sde, self.layout)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)  # a copy, not trained (DDP rejects unused trainable parameters)
        self._tic = None
        self.skipped_batches = 0
        self._skip_update = False

    # --- the epsilon functions samplers and likelihoods use ---------------------------------------
    def eps_fn(self, ema: bool = True, context=None):
        """``context``: a conditional model's raw targets, (M, K) or (M,) for one property, or a
        ``ContextSlot`` set batch by batch (``generate`` and guidance do that)."""
        net = self.ema.module if (ema and self.ema is not None) else self.net
        if self.context is None:
            if context is not None:
                raise ValueError("this model is unconditional: it takes no targets (context)")
            return lambda x, h, t, batch, n: net(x, h, t, batch, n)
        if context is None:
            raise ValueError(f"this model is conditional on {self.context.names}: give their targets (context=...)")
        return conditioned(net, self.context, context if isinstance(context, ContextSlot) else ContextSlot(context))

    def _batch_eps(self, net, batch: MoleculeBatch):
        """The network as the loss calls it: with the batch's own properties for a conditional model."""
        return net if self.context is None else conditioned(net, self.context, ContextSlot(batch.y))

    @property
    def horizon(self) -> float:
        """Where sampling starts from N(0, I): 1, or less for a model refined as a bridge (``moldiff.bridge``)."""
        return float(self.hparams.get("horizon", 1.0))

    @property
    def size_histogram(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.hparams.size_histogram.items()}

    # --- training -------------------------------------------------------------------------------
    def _generator(self, device) -> torch.Generator:
        key = (self.hparams.seed * 1_000_003 + self.global_step) * 64 + self.global_rank
        return torch.Generator(device=device).manual_seed(key % (2**63))

    def training_step(self, batch: MoleculeBatch, batch_idx: int):
        # checkpoints saved at this batch's end (callbacks run before the module's own hooks) must
        # count it as trained: the loader resumes after it (see data/loader.py)
        loader = self.trainer.train_dataloader
        if hasattr(loader, "mark_trained"):
            loader.mark_trained(self.current_epoch, batch_idx + 1)
        eps = self._batch_eps(self.net, batch)
        values, _ = self.objective(eps, batch.x, batch.h, batch.batch, batch.n_mol, self._generator(batch.x.device))
        loss = values.mean()
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
        if self.ema is not None and not self._skip_update:  # here, not in on_train_batch_end: checkpoints are saved before that
            self.ema.update_parameters(self.net)

    def on_train_batch_end(self, outputs, batch: MoleculeBatch, batch_idx: int):
        if self._tic is not None:
            world = self.trainer.world_size
            self.log("train/molecules_per_s", world * batch.n_mol / (time.perf_counter() - self._tic), batch_size=batch.n_mol)

    def validation_step(self, batch: MoleculeBatch, batch_idx: int):
        g = torch.Generator(device=batch.x.device).manual_seed(10_000 + batch_idx)  # same noise every time
        net = self.ema.module if self.ema is not None else self.net
        # always in float32, also under precision=bf16-mixed: runs of either precision compare on one scale
        with torch.autocast(batch.x.device.type, enabled=False):
            values, _ = self.objective(self._batch_eps(net, batch), batch.x, batch.h, batch.batch, batch.n_mol, g)
        self.log("val/loss", values.mean(), prog_bar=True, batch_size=batch.n_mol, sync_dist=True)

    def configure_optimizers(self):
        o = self.hparams.optim
        opt = torch.optim.AdamW(
            self.net.parameters(), lr=float(o["lr"]), weight_decay=float(o.get("weight_decay", 0.0)), amsgrad=bool(o.get("amsgrad", True))
        )
        decay = o.get("decay") or {}
        if decay.get("kind", "none") == "none":
            return opt
        factor = lr_factor(decay["kind"], int(decay["steps"]), float(decay.get("final", 0.1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, MoleculeBatch) else super().transfer_batch_to_device(batch, device, dataloader_idx)


def lr_factor(kind: str, steps: int, final: float):
    """The learning rate's factor at optimizer step k: from 1 down to ``final`` over ``steps`` steps
    (cosine or linear), then ``final``. Counted from this run's first step (a warm start's too)."""
    import math

    if kind not in ("cosine", "linear") or steps < 1 or not 0.0 <= final <= 1.0:
        raise ValueError(f"optim.decay: kind cosine|linear|none, steps >= 1, final in [0, 1]; got {kind!r}, {steps}, {final}")

    def factor(k: int) -> float:
        u = min(k / steps, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * u)) if kind == "cosine" else 1.0 - u
        return final + (1.0 - final) * shape

    return factor


class TrainingRecord(pl.Callback):
    """Keeps an honest account in every checkpoint: one entry per training session (hardware,
    first and last global step, epochs, wall time), carried over on resume and warm start."""

    def __init__(self, history: list | None = None):
        self.history = list(history or [])
        self._start = None
        self._entry = None

    def on_train_start(self, trainer, module):  # after a resumed checkpoint is restored
        import platform

        device = "cpu: " + (platform.processor() or platform.machine()) + f" ({torch.get_num_threads()} threads)"
        if module.device.type == "cuda":
            device = "gpu: " + torch.cuda.get_device_name(module.device)
        self._start = time.time()
        self._entry = {"device": device, "world_size": trainer.world_size, "precision": str(trainer.precision),
                       "first_step": int(trainer.global_step), "seconds": 0.0}

    def _current(self, trainer) -> list:
        if self._entry is None:
            return self.history
        entry = dict(self._entry, last_step=int(trainer.global_step), epoch=int(trainer.current_epoch), seconds=round(time.time() - self._start, 1))
        return self.history + [entry]

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["moldiff_record"] = self._current(trainer)

    def on_load_checkpoint(self, trainer, module, checkpoint):
        self.history = list(checkpoint.get("moldiff_record", []))
