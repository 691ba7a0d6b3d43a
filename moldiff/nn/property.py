"""``PropertyPredictor``: a time-conditioned EGNN encoder for molecular properties: atom
embeddings from an EGNN, an MLP per atom, summed per molecule (invariant to rotations,
translations and permutations). It predicts one or several properties (one output column each) in
normalised units ((y - mean) / std of its training set). Several properties can share one encoder
(a multi-task model: one training run instead of one per property).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moldiff.geometry import segment_sum
from moldiff.nn.egnn import EGNN

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
