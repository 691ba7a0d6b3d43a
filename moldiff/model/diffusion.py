"""``DiffusionModel``: one object that owns a trained diffusion model and everything needed to use it.

It holds the network and its EMA weights, the noise process (``VPSDE``, with its
parameterisation), the feature layout, the context normalisation of a conditional model and the
training atom-count histogram. Samplers, likelihoods, guidance and bridges take its ``eps_fn()``,
a denoiser of ``MolState`` batches (positions and continuous features) that returns epsilon per
field (or the model itself); the LightningModule in ``moldiff.train`` is only a training wrapper around it.

    model = DiffusionModel.load("shipped")
    mols = model.sample(100, seed=0)                 # a MoleculeSet
    rdkit_mols, atoms = to_rdkit(mols), to_ase(mols)  # moldiff.io.convert

Checkpoints are plain containers (configs as dicts, weights as tensors) and load with
``torch.load(weights_only=True)``: nothing in a file is ever run. Their state-dict keys are this
module's own (``net.*``, ``ema.*``), the same as the training checkpoints'.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moldiff.data.fragment import load_fragment
from moldiff.data.molecules import MoleculeSet
from moldiff.model import build
from moldiff.model.checkpoint import read_checkpoint, write_checkpoint
from moldiff.nn.context import Context, ContextSlot, conditioned
from moldiff.nn.cpu_tuning import tune_once
from moldiff.nn.denoiser import state_denoiser
from moldiff.sampling.generate import generate
from moldiff.sampling.samplers import with_recommended
from moldiff.state import MolState

# the hyperparameters the model itself needs; a training checkpoint carries more (loss, optim, seed)
MODEL_KEYS = ("model", "noise", "features", "size_histogram", "ema_decay", "context", "horizon")


class DiffusionModel(nn.Module):
    def __init__(
        self,
        model: dict[str, Any],
        noise: dict[str, Any],
        features: dict[str, Any],
        size_histogram: dict[int, int],
        ema_decay: float = 0.999,
        context: dict | None = None,
        horizon: float = 1.0,
        **extra,
    ):
        super().__init__()
        # everything that rebuilds this model, as plain containers (saved with the weights); extra
        # keys (a training run's loss, optim, seed, ...) travel along untouched
        self.config = {"model": model, "noise": noise, "features": features, "size_histogram": dict(size_histogram),
                       "ema_decay": float(ema_decay), "context": context, "horizon": float(horizon), **extra}
        self.layout = build.feature_layout(features)
        self.context = Context.from_dict(context)  # None: unconditional; else EDM-style conditioning
        self.net = build.network(model, self.layout.dim, len(self.context.names) if self.context else 0)
        self.sde = build.sde(noise)
        self.ema = build.ema(self.net, ema_decay)

    # --- what it knows -------------------------------------------------------------------------------
    @property
    def size_histogram(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.config["size_histogram"].items()}

    @property
    def horizon(self) -> float:
        """Where sampling starts from N(0, I): 1, or less for a model refined as a bridge (``moldiff.bridge``)."""
        return float(self.config.get("horizon") or 1.0)

    def network(self, ema: bool = True) -> nn.Module:
        return self.ema.module if (ema and self.ema is not None) else self.net

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    # --- epsilon functions ---------------------------------------------------------------------------
    def _as_eps(self, net):
        """The network as a denoiser of states predicting epsilon per field, whatever it outputs
        (``noise.prediction``)."""
        fn = state_denoiser(net)
        if self.sde.prediction == "eps":
            return fn
        sde = self.sde

        def eps(state, t, **kw):
            return sde.eps_from_output(fn(state, t, **kw), state, t)

        return eps

    def eps_fn(self, ema: bool = True, context=None):
        """``eps_fn(state, t) -> {"pos": eps, "atom_type": eps}`` for samplers, likelihoods and
        guidance: a ``MolState`` of positions and continuous features, per-molecule times ``t`` (M,).
        ``context``: a conditional model's raw targets, (M, K) or (M,) for one property, or a
        ``ContextSlot`` set batch by batch (``generate`` and guidance do that)."""
        net = self.network(ema)
        if self.context is None:
            if context is not None:
                raise ValueError("this model is unconditional: it takes no targets (context)")
            return self._as_eps(net)
        if context is None:
            raise ValueError(f"this model is conditional on {self.context.names}: give their targets (context=...)")
        return self._as_eps(conditioned(net, self.context, context if isinstance(context, ContextSlot) else ContextSlot(context)))

    def batch_eps_fn(self, ema: bool, y):
        """The epsilon function as the training loss calls it: with the batch's own properties ``y``
        for a conditional model."""
        net = self.network(ema)
        return self._as_eps(net if self.context is None else conditioned(net, self.context, ContextSlot(y)))

    def denoise(self, state: MolState, t, ema: bool = True, context=None) -> MolState:
        """One-step estimate of the clean molecule (a state) from z_t at per-molecule times ``t`` (M,)."""
        return self.sde.x0_from_eps(state, self.eps_fn(ema, context)(state, t), t)

    # --- sampling for Python users -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ancestral", steps: int = 300, seed: int = 0, sizes=None, batch_size: int = 500,
               context=None, precision: str = "32", progress: bool | None = None, fragment=None, n_atoms=None,
               **options) -> MoleculeSet:
        """``n`` molecules (atom counts from the training histogram unless ``sizes`` gives one for all or n of them);
        the defaults and settings of ``scripts/sample.py`` give its molecules. ``options`` go to the
        sampler on top of its recommended ones (``RECOMMENDED_OPTIONS``; ancestral:
        ``late_noise=1`` for EDM's exact posterior). ``progress``: None (default) one line on stderr,
        what is being sampled and then how long it took; True a progress bar; False silence.
        ``fragment``: an SDF/XYZ path or a one-molecule ``MoleculeSet`` kept exactly in every molecule
        (its atoms first, marked in ``fixed``); ``n_atoms``: the total atom count, a count or a range
        "a-b" (issue 30, docs/design.md)."""
        device = next(self.parameters()).device
        if device.type == "cpu":
            tune_once()  # the scripts' allocator settings, once per process (moldiff.nn.cpu_tuning)
        was_training = self.training
        self.eval()
        if progress is None:  # minutes of silence otherwise (issue 32)
            print(f"sampling {n} molecules ({sampler}, {steps} steps, {device}; progress=True for a bar) ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            if fragment is not None and not isinstance(fragment, MoleculeSet):
                fragment = load_fragment(fragment, self.layout.vocab)
            return generate(self, n, sampler=sampler, steps=steps, batch_size=batch_size, seed=seed, device=device, sizes=sizes,
                            context=context, precision=precision, progress=bool(progress), fragment=fragment, n_atoms=n_atoms,
                            **with_recommended(sampler, options))
        finally:
            self.train(was_training)
            if progress is None:
                print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    # --- files ---------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "DiffusionModel":
        """From a loaded checkpoint dict (training, exported or shipped)."""
        hp = ckpt["hyper_parameters"]
        model = cls(**{k: hp[k] for k in MODEL_KEYS if k in hp}, **{k: v for k, v in hp.items() if k not in MODEL_KEYS})
        model.load_state_dict(ckpt["state_dict"], strict=True)
        model.record = list(ckpt.get("moldiff_record", []))
        return model

    @classmethod
    def load(cls, path: str | Path = "shipped", device="cpu") -> "DiffusionModel":
        """``"shipped"`` (the QM9 model in the package) or a checkpoint path; in eval mode on ``device``."""
        if torch.device(device).type == "cpu":
            tune_once()  # before the first tensors: the scripts' allocator settings (moldiff.nn.cpu_tuning)
        return cls.from_checkpoint(read_checkpoint(path)).to(device).eval()

    def save(self, path: str | Path, record: list | None = None) -> Path:
        """Weights and configs in one file (atomic), loadable by ``load`` and as a warm start."""
        return write_checkpoint(path, {"state_dict": self.state_dict(), "hyper_parameters": self.config,
                                       "moldiff_record": list(record if record is not None else getattr(self, "record", []))})
