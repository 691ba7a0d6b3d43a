"""Learned property energies (EEGSDE, Bao et al. 2023): E(z_t, t) = (g(z_t, t) - c)^2.

``PropertyPredictor`` is a time-conditioned EGNN encoder: atom embeddings from an EGNN, an MLP
per atom, summed per molecule (invariant to rotations, translations and permutations). It predicts
one or several properties (one output column each) in normalised units ((y - mean) / std of its
training set); the energy compares a column to the normalised target c, so one guidance scale
suits every property. Several properties can share one encoder (a multi-task model: one training
run instead of one per property).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moldiff.geometry import segment_sum
from moldiff.guidance.guided import Energy
from moldiff.nn.egnn import EGNN

QM9_TARGETS = ("alpha", "gap", "homo", "lumo", "mu", "Cv")


class PropertyPredictor(nn.Module):
    def __init__(self, in_features: int, hidden: int = 128, layers: int = 4, time_conditioning: bool = True,
                 mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0, **egnn):
        super().__init__()
        mean = torch.atleast_1d(torch.as_tensor(mean, dtype=torch.float32))
        std = torch.atleast_1d(torch.as_tensor(std, dtype=torch.float32))
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean and std need one value per output, got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.encoder = EGNN(in_features, hidden=hidden, layers=layers, time_conditioning=time_conditioning, out_features=hidden, **egnn)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, len(mean)))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x, h, t, batch, n) -> torch.Tensor:
        """(M, K) normalised predictions."""
        _, atoms = self.encoder(x, h, t, batch, n)
        return segment_sum(self.head(atoms), batch, n)

    def predict(self, x, h, t, batch, n) -> torch.Tensor:
        """(M, K) predictions in the properties' units."""
        return self.forward(x, h, t, batch, n) * self.std + self.mean


class PropertyEnergy(Energy):
    """(g(z_t, t)[:, column] - c)^2 in normalised units; ``target`` a number or one per molecule (property units)."""

    def __init__(self, predictor: PropertyPredictor, target, name: str = "property", column: int = 0):
        if not 0 <= column < len(predictor.mean):
            raise ValueError(f"column {column} out of range: the predictor has {len(predictor.mean)} outputs")
        self.predictor, self.target, self.name, self.column = predictor, target, name, column

    def energy(self, x, h, t, batch, n, eps=None):
        mean, std = self.predictor.mean[self.column].to(x.dtype), self.predictor.std[self.column].to(x.dtype)
        c = (torch.as_tensor(self.target, dtype=x.dtype, device=x.device).expand(n) - mean) / std
        return (self.predictor(x, h, t, batch, n)[:, self.column] - c).square()
