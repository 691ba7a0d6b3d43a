"""The invariant per-atom input every network embeds: atom features, the diffusion time and, for a
conditional model, the per-molecule context (EDM's conditioning: properties concatenated to h)."""

from __future__ import annotations

import torch


def per_molecule(values, n_mol: int, batch: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar, (M,), (M, 1) or (M, K) per-molecule tensor spread to the atoms: (A, K)."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if v.numel() == 1:
        return v.reshape(1, 1).expand(like.shape[0], 1)
    if v.shape[0] != n_mol:
        raise ValueError(f"{name} must be a scalar or hold one row per molecule ({n_mol}), got shape {tuple(v.shape)}")
    return v.reshape(n_mol, -1)[batch]


def atom_inputs(h, t, batch, n_mol: int, time_conditioning: bool, context=None, context_features: int = 0) -> torch.Tensor:
    """``[h, t, context]`` per atom, (A, F + time_conditioning + context_features)."""
    cols = [h]
    if time_conditioning:
        cols.append(per_molecule(t, n_mol, batch, h, "t"))
    if context_features:
        if context is None:
            raise ValueError(f"this network is conditional ({context_features} context values per molecule): pass context=")
        c = per_molecule(context, n_mol, batch, h, "context")
        if c.shape[1] != context_features:
            raise ValueError(f"context has {c.shape[1]} values per molecule, the network takes {context_features}")
        cols.append(c)
    elif context is not None:
        raise ValueError("context given to an unconditional network (context_features=0)")
    return torch.cat(cols, dim=1) if len(cols) > 1 else h
