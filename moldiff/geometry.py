"""Zero-centre-of-mass geometry for batches of molecules as flat atom arrays.

A batch is ``x`` (A, 3) positions, ``h`` (A, F) features and ``batch`` (A,) the molecule index of
each atom (0..M-1, atoms of a molecule contiguous or not). Positions of diffusion models live in
the subspace where every molecule's (unweighted) centre of mass is zero, so noise, scores and
samples are projected there and likelihoods count (N - 1) * 3 dimensions.
"""

from __future__ import annotations

import torch


def segment_sum(values: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of ``values`` (A, ...) per molecule -> (M, ...)."""
    out = values.new_zeros((n,) + values.shape[1:])
    return out.index_add_(0, batch, values)


def atom_counts(batch: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(batch, minlength=n)


def remove_mean(x: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Project (A, 3) onto the zero-centre-of-mass subspace, molecule by molecule."""
    counts = atom_counts(batch, n).clamp(min=1).to(x.dtype)
    mean = segment_sum(x, batch, n) / counts[:, None]
    return x - mean[batch]


def centered_noise(batch: torch.Tensor, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gaussian noise in the zero-CoM subspace (isotropic there)."""
    eps = torch.randn((len(batch), 3), generator=generator, dtype=dtype, device=batch.device)
    return remove_mean(eps, batch, n)


def com_free_dims(batch: torch.Tensor, n: int) -> torch.Tensor:
    """(M,) degrees of freedom of the positions: (N - 1) * 3 per molecule."""
    return (atom_counts(batch, n) - 1) * 3


def max_com(x: torch.Tensor, batch: torch.Tensor, n: int) -> float:
    """Largest |centre of mass| in the batch (a check, used by tests)."""
    counts = atom_counts(batch, n).clamp(min=1).to(x.dtype)
    return float((segment_sum(x, batch, n) / counts[:, None]).norm(dim=1).max())
