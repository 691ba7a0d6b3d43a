"""The bond model's training loss: one time per molecule, every field noised by its own process,
one loss term per field, summed with per-field weights.

    loss(molecule) = w(t) * [ w_pos * mean_atoms |x0_hat - x0|^2
                              + w_type * CE(atom_type) + w_charge * CE(charge) + w_bond * mean_pairs CE(bond) ]

Positions use the VP process of the Gaussian model (zero-CoM noise) and the network predicts the
clean positions (x0), as EQGAT-diff found best; types, charges and bonds use
``CategoricalProcess`` and cross-entropy against the clean class. ``w(t)`` is ``"snr_clip"``,
clip(SNR(t), lo, hi) (EQGAT-diff's time weight; issue 13's recipe study), or ``"none"``.
The field weights' defaults are FlowMol3's (positions 3, types 0.4, charges 1, bonds 2).

Self-conditioning: for a network built with it, a share ``self_condition`` of the batches first
runs the network without gradient and then again given that estimate; the loss is the second
pass's (Chen et al.), so the network learns to refine its own estimate as the sampler feeds it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from moldiff.geometry import centered_noise, segment_sum
from moldiff.nn.bond_egnn import predict
from moldiff.noise.categorical import CategoricalProcess
from moldiff.noise.vp_sde import VPSDE
from moldiff.state import MolState

CATEGORICAL_FIELDS = ("atom_type", "charge", "bond")
DEFAULT_WEIGHTS = {"pos": 3.0, "atom_type": 0.4, "charge": 1.0, "bond": 2.0}
TIME_WEIGHTS = ("snr_clip", "none")


def noised(state: MolState, t: torch.Tensor, sde: VPSDE, processes: dict[str, CategoricalProcess], generator=None) -> MolState:
    """z_t ~ q(z_t | state) at per-molecule times ``t`` (M,), each field by its own process."""
    eps = centered_noise(state.batch, state.n_mol, generator, state.pos.dtype)
    pos = sde.alpha(t, state.batch) * state.pos + sde.sigma(t, state.batch) * eps
    changes = {"pos": pos}
    for name, process in processes.items():
        changes[name] = process.perturb(getattr(state, name), t[state.field_batch(name)], generator)
    return state.replace(**changes)


class FieldLoss:
    def __init__(self, sde: VPSDE, processes: dict[str, CategoricalProcess], weights: dict | None = None,
                 time_weight: str = "snr_clip", snr_clip=(0.05, 1.5), t_min: float = 1e-3, self_condition: float = 0.5):
        if time_weight not in TIME_WEIGHTS:
            raise ValueError(f"time_weight must be one of {TIME_WEIGHTS}, got {time_weight!r}")
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"loss weights: unknown fields {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        if any(v < 0 for v in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        if not 0.0 < float(snr_clip[0]) <= float(snr_clip[1]):
            raise ValueError(f"snr_clip must be 0 < lo <= hi, got {list(snr_clip)}")
        self.sde, self.processes, self.time_weight = sde, processes, time_weight
        self.snr_clip = (float(snr_clip[0]), float(snr_clip[1]))
        self.t_min = float(t_min)
        if not 0.0 <= float(self_condition) <= 1.0:
            raise ValueError(f"self_condition is the share of self-conditioned batches, in [0, 1]; got {self_condition}")
        self.self_condition = float(self_condition)

    def sample_times(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
        return self.t_min + (1.0 - self.t_min) * u

    def __call__(self, denoise_fn, state: MolState, generator=None, t: torch.Tensor | None = None):
        """(M,) loss per molecule and a dict of (M,) unweighted terms per field.
        ``denoise_fn(state_t, t) -> {field: prediction}``."""
        n = state.n_mol
        if t is None:
            t = self.sample_times(n, state.pos, generator)
        zt = noised(state, t, self.sde, self.processes, generator)
        previous = None
        # draw only for a self-conditioned network, so other runs keep their random stream
        if getattr(denoise_fn, "self_condition", False) and self.self_condition > 0:
            if float(torch.rand((), generator=generator, device=t.device)) < self.self_condition:
                with torch.no_grad():
                    previous = predict(denoise_fn, zt, t)
        pred = predict(denoise_fn, zt, t, previous)
        atoms = torch.bincount(state.batch, minlength=n).clamp_min(1).to(t.dtype)
        terms = {"pos": segment_sum((pred["pos"] - state.pos).square().sum(1), state.batch, n) / atoms}
        for name in CATEGORICAL_FIELDS:
            if name not in self.processes:
                continue
            fb = state.field_batch(name)
            ce = F.cross_entropy(pred[name].float(), getattr(state, name).long(), reduction="none")
            count = torch.bincount(fb, minlength=n).clamp_min(1).to(t.dtype)
            terms[name] = segment_sum(ce.to(t.dtype), fb, n) / count
        total = sum(self.weights[k] * v for k, v in terms.items())
        if self.time_weight == "snr_clip":
            snr = self.sde.schedule.log_snr(t).exp()
            total = total * snr.clamp(*self.snr_clip)
        return total, terms
