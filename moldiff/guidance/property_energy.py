"""Learned property energies (EEGSDE, Bao et al. 2023): E(z_t, t) = (g(z_t, t) - c)^2, with g a
``PropertyPredictor`` (``moldiff.nn.property``) in normalised units; the energy compares one of
its columns to the normalised target c, so one guidance scale suits every property.
"""

from __future__ import annotations

import torch

from moldiff.guidance.guided import Energy
from moldiff.nn.property import PropertyPredictor

class PropertyEnergy(Energy):
    """(g(z_t, t)[:, column] - c)^2 in normalised units; ``target`` a number or one per molecule (property units)."""

    def __init__(self, predictor: PropertyPredictor, target, name: str = "property", column: int = 0):
        if not 0 <= column < len(predictor.mean):
            raise ValueError(f"column {column} out of range: the predictor has {len(predictor.mean)} outputs")
        self.predictor, self.target, self.name, self.column = predictor, target, name, column

    def energy(self, state, t, eps=None):
        x, n = state.pos, state.n_mol
        mean, std = self.predictor.mean[self.column].to(x.dtype), self.predictor.std[self.column].to(x.dtype)
        c = (torch.as_tensor(self.target, dtype=x.dtype, device=x.device).expand(n) - mean) / std
        # the predictor is a network on tensors (moldiff.nn.property): the state is unpacked at its boundary
        return (self.predictor(x, state.atom_type, t, state.batch, n)[:, self.column] - c).square()
