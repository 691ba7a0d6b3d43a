"""Learned property energies (EEGSDE, Bao et al. 2023): E(z_t, t) = (g(z_t, t) - c)^2.

``PropertyPredictor`` is a time-conditioned EGNN encoder: atom embeddings from an EGNN, an MLP
per atom, summed per molecule (invariant to rotations, translations and permutations). It predicts
the property in normalised units ((y - mean) / std of its training set); the energy compares it
to the normalised target c, so one guidance scale suits every property.
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.geometry import segment_sum
from moldiff.guidance.guided import Energy
from moldiff.nn.egnn import EGNN

QM9_TARGETS = ("alpha", "gap", "homo", "lumo", "mu", "Cv")


class PropertyPredictor(nn.Module):
    def __init__(self, in_features: int, hidden: int = 128, layers: int = 4, time_conditioning: bool = True, mean: float = 0.0, std: float = 1.0, **egnn):
        super().__init__()
        self.encoder = EGNN(in_features, hidden=hidden, layers=layers, time_conditioning=time_conditioning, out_features=hidden, **egnn)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x, h, t, batch, n) -> torch.Tensor:
        """(M,) normalised prediction."""
        _, atoms = self.encoder(x, h, t, batch, n)
        return segment_sum(self.head(atoms)[:, 0], batch, n)

    def predict(self, x, h, t, batch, n) -> torch.Tensor:
        """(M,) prediction in the property's units."""
        return self.forward(x, h, t, batch, n) * self.std + self.mean


class PropertyEnergy(Energy):
    """(g(z_t, t) - c)^2 in normalised units; ``target`` a number or one per molecule (property units)."""

    def __init__(self, predictor: PropertyPredictor, target, name: str = "property"):
        self.predictor, self.target, self.name = predictor, target, name

    def energy(self, x, h, t, batch, n, eps=None):
        c = torch.as_tensor(self.target, dtype=x.dtype, device=x.device).expand(n)
        c = (c - self.predictor.mean.to(x.dtype)) / self.predictor.std.to(x.dtype)
        return (self.predictor(x, h, t, batch, n) - c).square()
