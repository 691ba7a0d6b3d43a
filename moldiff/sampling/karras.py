"""Karras et al.'s stochastic sampler ("Elucidating the Design Space of Diffusion-Based Generative
Models", 2022, Algorithm 2), written for the VP process and an epsilon network.

It works on the variance-exploding view of the same process: x~ = z / alpha_t with noise level
s_t = sigma_t / alpha_t, where the probability-flow ODE is dx~/ds = eps_hat. Each step from s_i
to s_{i+1}: "churn" first raises the noise to s^ = (1 + gamma) s_i by adding fresh noise of
variance s^2 - s_i^2 (scaled by ``s_noise``), with gamma = min(churn / steps, sqrt(2) - 1) inside
[s_tmin, s_tmax] and 0 outside; then a Heun step of the ODE from s^ to s_{i+1} (2 network calls).
``churn=0`` is the deterministic Heun ODE solver. The time grid is the paper's rho-spaced grid in
s (``time_grid(kind="karras")``), which concentrates steps at low noise.
"""

from __future__ import annotations

import math

import torch

from moldiff.sampling.base import after_step, molecule_times


def _eps(eps_fn, sde, xt, ht, s, batch, n):
    """eps_hat at noise level s for the VE variables (x~, h~): the network sees z = alpha x~."""
    t = float(sde.schedule.t_of_log_snr(torch.tensor(-2.0 * math.log(s), dtype=torch.float64)))
    a = float(sde.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
    return eps_fn(a * xt, a * ht, molecule_times(t, n, xt), batch, n)


def karras(eps_fn, sde, x, h, grid, batch, n, generator=None, churn: float = 0.0, s_noise: float = 1.0,
           s_tmin: float = 0.0, s_tmax: float = float("inf"), heun: bool = True, callback=None):
    sch = sde.schedule
    g64 = grid.to(torch.float64)
    levels = (sch.sigma(g64) / sch.alpha(g64)).tolist()  # s_t along the grid
    steps = len(levels) - 1
    a0 = float(sch.alpha(g64[0]))
    xt, ht = x / a0, h / a0
    alphas = sch.alpha(g64).tolist()
    for i, (s_cur, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = min(churn / steps, math.sqrt(2) - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            zx, zh = sde.noise(batch, n, h.shape[1], x, generator)
            extra = s_noise * math.sqrt(s_hat**2 - s_cur**2)
            xt, ht = xt + extra * zx, ht + extra * zh
        ex, eh = _eps(eps_fn, sde, xt, ht, s_hat, batch, n)
        x_next, h_next = xt + (s_next - s_hat) * ex, ht + (s_next - s_hat) * eh
        if heun:
            ex2, eh2 = _eps(eps_fn, sde, x_next, h_next, s_next, batch, n)
            x_next = xt + (s_next - s_hat) * 0.5 * (ex + ex2)
            h_next = ht + (s_next - s_hat) * 0.5 * (eh + eh2)
        xt, ht = x_next, h_next
        if callback is not None:  # the hook sees z = alpha x~ at the step's end time, as every sampler's does
            a = alphas[i + 1]
            zx, zh = a * xt, a * ht
            nx, nh = after_step(callback, i, float(g64[i]), float(g64[i + 1]), zx, zh, batch, n)
            if nx is not zx or nh is not zh:  # only a returned state moves x~ (no round trip through alpha)
                xt, ht = nx / a, nh / a
    a_end = float(sch.alpha(g64[-1]))
    return a_end * xt, a_end * ht
