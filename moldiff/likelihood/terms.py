"""Pieces shared by the ELBO and the ODE likelihood, per molecule (M,), in nats."""

from __future__ import annotations

import math

import torch

from moldiff.geometry import atom_counts, segment_sum
from moldiff.state import MolState


def dimensions(batch, n, feat_dim: int) -> torch.Tensor:
    """(N - 1) * 3 position dimensions (zero CoM) plus N * F feature dimensions."""
    counts = atom_counts(batch, n)
    return (counts - 1) * 3 + counts * feat_dim


def _squared_norm(state: MolState) -> torch.Tensor:
    """(M,) |z|^2 over positions and features."""
    return segment_sum(state.pos.square().sum(1) + state.atom_type.square().sum(1), state.batch, state.n_mol)


def standard_normal_log_prob(state: MolState) -> torch.Tensor:
    """log N(z; 0, I) on the zero-CoM subspace times R^(N F) (the prior p_1)."""
    dims = dimensions(state.batch, state.n_mol, state.atom_type.shape[1]).to(state.pos.dtype)
    return -0.5 * (_squared_norm(state) + dims * math.log(2 * math.pi))


def prior_kl(sde, clean: MolState, t1: float = 1.0) -> torch.Tensor:
    """KL(q(z_1 | z_0) || N(0, I)) over the same dimensions: 1/2 (d s^2 + a^2 |z_0|^2 - d - d log s^2)."""
    x0, n = clean.pos, clean.n_mol
    t = torch.full((n,), t1, dtype=x0.dtype, device=x0.device)
    a2, s2 = sde.schedule.alpha2(t), sde.schedule.sigma2(t)
    dims = dimensions(clean.batch, n, clean.atom_type.shape[1]).to(x0.dtype)
    sq = _squared_norm(clean)
    return 0.5 * (dims * s2 + a2 * sq - dims - dims * torch.log(s2))


def log_p_atoms(histogram: dict[int, int], batch, n) -> torch.Tensor:
    """log p(N) from the training atom-count histogram (-inf for a count never seen)."""
    counts = atom_counts(batch, n)
    total = float(sum(histogram.values()))
    table = torch.full((int(max(max(histogram), int(counts.max()))) + 1,), float("-inf"), dtype=torch.float64)
    for k, v in histogram.items():
        table[int(k)] = math.log(v / total)
    return table[counts.cpu()].to(counts.device)
