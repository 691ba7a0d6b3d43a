"""Atom features as the diffusion sees them: EDM's scaled one-hot types and atomic-number charges.

EDM diffuses h = [one_hot(type) / 4, Z / 10] (``normalize_factors [1, 4, 10]``: positions unscaled).
The scaling matters: it sets how early in the forward process atom types are destroyed relative
to geometry (types must survive until the positions are roughly placed). Decoding takes the
argmax of the one-hot block; the charge channel only helps the network and the L0 likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moldiff.data.elements import Vocabulary


@dataclass(frozen=True)
class FeatureLayout:
    """Columns of h: ``len(vocab)`` one-hot type columns, then (optionally) one charge column."""

    vocab: Vocabulary
    include_charges: bool = True
    onehot_scale: float = 4.0
    charge_scale: float = 10.0

    @property
    def n_types(self) -> int:
        return len(self.vocab)

    @property
    def dim(self) -> int:
        return self.n_types + int(self.include_charges)

    def encode_indices(self, types: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """(A, dim) scaled features from vocabulary indices (A,)."""
        types = types.long()
        onehot = torch.nn.functional.one_hot(types, self.n_types).to(dtype) / self.onehot_scale
        if not self.include_charges:
            return onehot
        charges = torch.as_tensor(self.vocab.numbers, device=types.device)[types].to(dtype)
        return torch.cat([onehot, charges[:, None] / self.charge_scale], dim=1)

    def encode_numbers(self, numbers: np.ndarray | torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """(A, dim) scaled features from atomic numbers; every element must be in the vocabulary."""
        idx = self.vocab.encode(np.asarray(numbers))
        if (idx < 0).any():
            bad = sorted(set(np.asarray(numbers)[idx < 0].tolist()))
            raise ValueError(f"atomic numbers {bad} are not in the {self.vocab.name} vocabulary {self.vocab.symbols}")
        return self.encode_indices(torch.from_numpy(idx), dtype)

    def onehot(self, h: torch.Tensor) -> torch.Tensor:
        """Unscaled one-hot block (A, n_types) of scaled features."""
        return h[:, : self.n_types] * self.onehot_scale

    def charges(self, h: torch.Tensor) -> torch.Tensor:
        """Unscaled charge column (A,) of scaled features."""
        if not self.include_charges:
            raise ValueError("this layout has no charge column")
        return h[:, self.n_types] * self.charge_scale

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary indices (A,): argmax of the one-hot block."""
        return h[:, : self.n_types].argmax(dim=1)

    def decode_numbers(self, h: torch.Tensor) -> np.ndarray:
        return self.vocab.numbers[self.decode(h).cpu().numpy()]
