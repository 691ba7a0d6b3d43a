"""The Gaussian model's fields and how each is noised: what a ``MolState`` of the coordinates-only
model carries, each field declaring its noise process and its loss weight (the bond model declares
its categorical fields the same way, with ``CategoricalProcess``).

* ``pos`` (A, 3): the VP process in the zero-centre-of-mass subspace (noise projected per molecule);
* ``atom_type`` (A, F): EDM's continuous features (scaled one-hot types and the charge channel,
  ``data/features.py``), the VP process in plain Euclidean space.

Both fields share the one ``VPSDE`` schedule and parameterisation; the process is per field only in
where its noise lives. ``weight`` is the field's weight in the simple and SNR-clipped losses (1:
EDM's per-dimension mean over all of z; the ELBO always weighs every dimension 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moldiff.geometry import centered_noise


@dataclass(frozen=True)
class GaussianField:
    name: str
    centred: bool = False  # zero centre of mass per molecule (positions)
    width: int | None = None  # columns per atom; None: the feature layout's (given at the prior draw)
    weight: float = 1.0

    def draw(self, batch: torch.Tensor, n: int, width: int, dtype, generator=None) -> torch.Tensor:
        """(A, width) standard Gaussian noise of this field (zero CoM per molecule if ``centred``)."""
        if self.centred:
            if width != 3:
                raise ValueError(f"{self.name}: a centred field is (A, 3) positions, got width {width}")
            return centered_noise(batch, n, generator, dtype)
        return torch.randn((len(batch), width), generator=generator, dtype=dtype, device=batch.device)


POSITIONS = GaussianField("pos", centred=True, width=3)
FEATURES = GaussianField("atom_type")
GAUSSIAN_FIELDS = (POSITIONS, FEATURES)  # in this order: the order noise is drawn in (seeded runs depend on it)
