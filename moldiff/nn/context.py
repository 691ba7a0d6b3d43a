"""Conditioning a diffusion on molecular properties, as EDM's conditional models do: the chosen
properties, normalised by their training mean and mean absolute deviation, are appended to every
atom's input features. ``Context`` holds that normalisation (it travels in the checkpoint);
``ContextSlot`` holds the raw targets of the batch being sampled, so a conditional eps function can
be wrapped (e.g. by guidance) and still get new targets batch by batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Context:
    names: list[str]
    mean: list[float]
    mad: list[float]

    @classmethod
    def fit(cls, names, y) -> "Context":
        """From training targets ``y`` (M, K) (EDM's ``compute_mean_mad``)."""
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        mean = y.mean(0)
        mad = np.abs(y - mean).mean(0)
        if not np.isfinite(mean).all() or (mad <= 0).any():
            raise ValueError(f"context {list(names)}: targets must be finite and not constant")
        return cls(list(names), mean.tolist(), mad.tolist())

    @classmethod
    def from_dict(cls, d: dict | None) -> "Context | None":
        return None if not d else cls(list(d["names"]), list(d["mean"]), list(d["mad"]))

    def to_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean, "mad": self.mad}

    def normalise(self, values, like: torch.Tensor) -> torch.Tensor:
        """Raw targets, (M,) for one property or (M, K) -> (M, K) network input."""
        v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        if v.ndim == 1 and len(self.names) == 1:
            v = v[:, None]
        if v.ndim != 2 or v.shape[1] != len(self.names):
            raise ValueError(f"context: expected targets for {self.names} per molecule, got shape {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError("context: targets must be finite")
        mean = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device)
        mad = torch.as_tensor(self.mad, dtype=like.dtype, device=like.device)
        return (v - mean) / mad


class ContextSlot:
    """Raw targets of the molecules being sampled now: set ``values`` before each batch."""

    def __init__(self, values=None):
        self.values = values


def conditioned(net, context: Context, slot: ContextSlot):
    """``eps_fn(x, h, t, batch, n)`` of a conditional network, reading its targets from ``slot``."""

    def eps_fn(x, h, t, batch, n, **kw):
        if slot.values is None:
            raise ValueError(f"this model is conditional on {context.names}: set the targets before sampling")
        c = context.normalise(slot.values, x)
        if c.shape[0] != n:
            raise ValueError(f"context: {c.shape[0]} targets for a batch of {n} molecules")
        return net(x, h, t, batch, n, context=c, **kw)

    return eps_fn
