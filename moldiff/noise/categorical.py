"""Categorical diffusion towards the data's marginal distribution (MiDi, EQGAT-diff), in
continuous time, for atom types, formal charges and bond orders.

The forward kernel from the clean class c at time t is

    q(x_t | x_0 = c) = keep(t) onehot(c) + (1 - keep(t)) m,      keep(t) = cos(pi t / 2)^(2 nu),

with m the training data's class frequencies. Mixing with a fixed distribution composes with
itself (m^T 1 = 1), so between any two times s < t

    q(x_t | x_s) = a onehot(x_s) + (1 - a) m,                    a = keep(t) / keep(s),

which is what lets every time grid (100 uniform steps, a log-SNR grid, ...) use exact transitions:
the discrete-time processes of MiDi and EQGAT-diff are this one read on a fixed grid of T steps.
At t = 1 the state is a draw from m (the prior: no information left), and no class the data never
shows appears at any time. ``nu`` sets when a field loses its information: the larger, the
earlier (MiDi's schedules differ per field in the same way).

The reverse step takes the network's clean-class probabilities p(x_0 | x_t) and marginalises the
exact posterior over them:

    p(x_s = k | x_t = j) = sum_c p(c) q(x_t = j | x_s = k) q(x_s = k | c) / q(x_t = j | c),

computed in O(K^2) per item. ``m`` is floored at ``MIN_MASS`` (renormalised) so that every
q(x_t | c) is positive and the division is always defined.
"""

from __future__ import annotations

import math

import torch

MIN_MASS = 1e-4


class CategoricalProcess:
    def __init__(self, marginal, nu: float = 1.0):
        m = torch.as_tensor(marginal, dtype=torch.float64).flatten()
        if m.numel() < 2 or not torch.isfinite(m).all() or (m < 0).any() or float(m.sum()) <= 0:
            raise ValueError(f"marginal: need >= 2 non-negative class weights with a positive sum, got {m.tolist()}")
        if not float(nu) > 0:
            raise ValueError(f"nu must be > 0, got {nu}")
        m = m / m.sum()
        m = (m + MIN_MASS) / (1 + MIN_MASS * m.numel())
        self.marginal = m
        self.nu = float(nu)

    @property
    def n_classes(self) -> int:
        return self.marginal.numel()

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a class survives from 0 to t untouched: cos(pi t / 2)^(2 nu); larger
        nu loses information earlier."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.cos(0.5 * math.pi * t.clamp(0.0, 1.0)).clamp_min(0.0) ** (2 * self.nu)

    def _m(self, like: torch.Tensor) -> torch.Tensor:
        return self.marginal.to(dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device)

    # --- forward ------------------------------------------------------------------------------
    def marginal_probs(self, x0: torch.Tensor, t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """(N, K) q(x_t | x_0) for class indices ``x0`` (N,) at per-item times ``t`` (N,)."""
        keep = self.keep(t).to(dtype)[:, None]
        m = self.marginal.to(dtype=dtype, device=x0.device)
        return keep * torch.nn.functional.one_hot(x0.long(), self.n_classes).to(dtype) + (1 - keep) * m

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0), (N,) class indices."""
        return draw(self.marginal_probs(x0, t), generator)

    def transition(self, xs: torch.Tensor, s: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ q(x_t | x_s) = Q(keep(t) / keep(s)) for per-item times s < t: noising a state further
        (RePaint's resampling goes back up the time grid this way)."""
        a = (self.keep(t) / self.keep(s).clamp_min(1e-30)).to(torch.float32)[:, None]
        m = self.marginal.to(dtype=torch.float32, device=xs.device)
        return draw(a * torch.nn.functional.one_hot(xs.long(), self.n_classes).float() + (1 - a) * m, generator)

    def prior(self, n: int, device="cpu", generator=None) -> torch.Tensor:
        """(n,) draws from m, the state at t = 1."""
        probs = self.marginal.to(dtype=torch.float32, device=device).expand(n, -1)
        return draw(probs, generator)

    # --- reverse ------------------------------------------------------------------------------
    def posterior(self, xt: torch.Tensor, p0: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N, K) p(x_s | x_t) = sum_c p0[c] q(x_s | x_t, x_0 = c), per-item times s < t (N,)."""
        dtype = p0.dtype
        K = self.n_classes
        m = self.marginal.to(dtype=dtype, device=p0.device)
        keep_s, keep_t = self.keep(s).to(dtype)[:, None], self.keep(t).to(dtype)[:, None]
        a = keep_t / keep_s.clamp_min(1e-30)
        onehot_t = torch.nn.functional.one_hot(xt.long(), K).to(dtype)
        m_j = m[xt.long()][:, None]  # (N, 1) mass of the observed class
        q_t_given_c = keep_t * onehot_t + (1 - keep_t) * m_j  # (N, K) q(x_t = j | c) as a function of c
        w = p0 / q_t_given_c
        s_k = keep_s * w + (1 - keep_s) * m * w.sum(1, keepdim=True)  # sum_c w_c q(x_s = k | c)
        q_t_given_s = a * onehot_t + (1 - a) * m_j  # q(x_t = j | x_s = k) as a function of k
        probs = (q_t_given_s * s_k).clamp_min(0.0)
        return probs / probs.sum(1, keepdim=True).clamp_min(1e-30)


def draw(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One class index per row of ``probs`` (N, K), by inverse CDF: one uniform per row, so the
    random stream does not depend on the number of classes."""
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=probs.dtype, device=probs.device)
    cdf = probs.cumsum(1)
    cdf = cdf / cdf[:, -1:]
    return torch.searchsorted(cdf, u * (1 - 1e-7)).squeeze(1).clamp_max(probs.shape[1] - 1)
