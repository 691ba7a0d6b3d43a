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

Fragment conditioning: for a network built with it, a share ``fragment`` of the molecules get a
random fragment (``data/random_fragments.py``) held clean in the noisy state: its atoms' positions,
types and charges, and the bonds among its atoms. Such a molecule is moved into its fragment's
frame (the fixed atoms' centroid at the origin), since the fragment, not the centre of mass, pins
it in space; its free atoms are noised with plain isotropic noise there, so at t = 1 they are
N(0, I) around the fragment, where the sampler starts them. The loss covers only what the model
makes: free atoms and the pairs with at least one free atom.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from moldiff.data.random_fragments import random_fragments
from moldiff.geometry import remove_mean, segment_sum
from moldiff.nn.bond_egnn import predict
from moldiff.noise.categorical import CategoricalProcess
from moldiff.noise.vp_sde import VPSDE
from moldiff.state import MolState

CATEGORICAL_FIELDS = ("atom_type", "charge", "bond")
DEFAULT_WEIGHTS = {"pos": 3.0, "atom_type": 0.4, "charge": 1.0, "bond": 2.0}
TIME_WEIGHTS = ("snr_clip", "none")


def noised(state: MolState, t: torch.Tensor, sde: VPSDE, processes: dict[str, CategoricalProcess], generator=None) -> MolState:
    """z_t ~ q(z_t | state) at per-molecule times ``t`` (M,), each field by its own process. Where
    ``state.fixed`` is set, fixed atoms and pairs of two fixed atoms stay clean and the free atoms of
    those molecules get isotropic noise (zero-CoM noise elsewhere)."""
    raw = torch.randn(state.pos.shape, generator=generator, dtype=state.pos.dtype, device=state.device)
    eps = remove_mean(raw, state.batch, state.n_mol)
    if state.fixed is not None:
        eps = torch.where(state.held()[state.batch, None], raw, eps)
    pos = sde.alpha(t, state.batch) * state.pos + sde.sigma(t, state.batch) * eps
    changes = {"pos": pos}
    for name, process in processes.items():
        changes[name] = process.perturb(getattr(state, name), t[state.field_batch(name)], generator)
    return state.replace(**changes).keep_fixed(state)


def in_fragment_frame(state: MolState) -> MolState:
    """Molecules with fixed atoms translated so that those atoms' centroid is at the origin."""
    f, b, n = state.fixed, state.batch, state.n_mol
    w = f.to(state.pos.dtype)[:, None]
    centroid = segment_sum(state.pos * w, b, n) / segment_sum(w, b, n).clamp_min(1.0)
    return state.replace(pos=state.pos - centroid[b])


class FieldLoss:
    def __init__(self, sde: VPSDE, processes: dict[str, CategoricalProcess], weights: dict | None = None,
                 time_weight: str = "snr_clip", snr_clip=(0.05, 1.5), t_min: float = 1e-3, self_condition: float = 0.5,
                 fragment: float = 0.5, hydrogen: int | None = None):
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
        if not 0.0 <= float(fragment) <= 1.0:
            raise ValueError(f"fragment is the share of molecules trained around a fragment, in [0, 1]; got {fragment}")
        self.fragment, self.hydrogen = float(fragment), hydrogen

    def sample_times(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
        return self.t_min + (1.0 - self.t_min) * u

    def __call__(self, denoise_fn, state: MolState, generator=None, t: torch.Tensor | None = None):
        """(M,) loss per molecule and a dict of (M,) unweighted terms per field.
        ``denoise_fn(state_t, t) -> {field: prediction}``."""
        n = state.n_mol
        if t is None:
            t = self.sample_times(n, state.pos, generator)
        # draw only for a fragment-conditioned network, so other runs keep their random stream
        if getattr(denoise_fn, "fragment_condition", False) and self.fragment > 0 and state.fixed is None:
            state = state.replace(fixed=random_fragments(state, self.fragment, self.hydrogen, generator))
        if state.fixed is not None:
            state = in_fragment_frame(state)
        zt = noised(state, t, self.sde, self.processes, generator)
        previous = None
        # draw only for a self-conditioned network, so other runs keep their random stream
        if getattr(denoise_fn, "self_condition", False) and self.self_condition > 0:
            if float(torch.rand((), generator=generator, device=t.device)) < self.self_condition:
                with torch.no_grad():
                    previous = predict(denoise_fn, zt, t)
        pred = predict(denoise_fn, zt, t, previous)
        # what the model makes: every atom and pair, less the fixed atoms and the pairs of two of them
        free = torch.ones_like(state.batch, dtype=torch.bool) if state.fixed is None else ~state.fixed
        free_pairs = free[state.pairs[:, 0]] | free[state.pairs[:, 1]]
        w_atom = free.to(t.dtype)
        atoms = segment_sum(w_atom[:, None], state.batch, n)[:, 0].clamp_min(1)
        terms = {"pos": segment_sum(((pred["pos"] - state.pos).square().sum(1) * w_atom)[:, None], state.batch, n)[:, 0] / atoms}
        for name in CATEGORICAL_FIELDS:
            if name not in self.processes:
                continue
            fb = state.field_batch(name)
            w = (free_pairs if name == "bond" else free).to(t.dtype)
            ce = F.cross_entropy(pred[name].float(), getattr(state, name).long(), reduction="none")
            count = segment_sum(w[:, None], fb, n)[:, 0].clamp_min(1)
            terms[name] = segment_sum((ce.to(t.dtype) * w)[:, None], fb, n)[:, 0] / count
        total = sum(self.weights[k] * v for k, v in terms.items())
        if self.time_weight == "snr_clip":
            snr = self.sde.schedule.log_snr(t).exp()
            total = total * snr.clamp(*self.snr_clip)
        return total, terms
