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


def _scaled(state, names, c):
    """The state with its diffused fields multiplied by c (between z and the VE variable x~ = z / alpha)."""
    return state.replace(**{k: c * getattr(state, k) for k in names})


def _eps(eps_fn, sde, ve, s):
    """eps_hat at noise level s for the VE state x~: the network sees z = alpha x~."""
    t = float(sde.schedule.t_of_log_snr(torch.tensor(-2.0 * math.log(s), dtype=torch.float64)))
    a = float(sde.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
    return eps_fn(_scaled(ve, sde.names, a), molecule_times(t, ve.n_mol, ve.pos))


def karras(eps_fn, sde, state, grid, generator=None, churn: float = 0.0, s_noise: float = 1.0,
           s_tmin: float = 0.0, s_tmax: float = float("inf"), heun: bool = True, callback=None):
    sch, names = sde.schedule, sde.names
    g64 = grid.to(torch.float64)
    levels = (sch.sigma(g64) / sch.alpha(g64)).tolist()  # s_t along the grid
    steps = len(levels) - 1
    a0 = float(sch.alpha(g64[0]))
    ve = state.replace(**{k: getattr(state, k) / a0 for k in names})  # x~ = z / alpha
    alphas = sch.alpha(g64).tolist()
    for i, (s_cur, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = min(churn / steps, math.sqrt(2) - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            z = sde.noise(state, generator)
            extra = s_noise * math.sqrt(s_hat**2 - s_cur**2)
            ve = ve.replace(**{k: getattr(ve, k) + extra * z[k] for k in names})
        e1 = _eps(eps_fn, sde, ve, s_hat)
        nxt = ve.replace(**{k: getattr(ve, k) + (s_next - s_hat) * e1[k] for k in names})
        if heun:
            e2 = _eps(eps_fn, sde, nxt, s_next)
            nxt = ve.replace(**{k: getattr(ve, k) + (s_next - s_hat) * 0.5 * (e1[k] + e2[k]) for k in names})
        ve = nxt
        if callback is not None:  # the hook sees z = alpha x~ at the step's end time, as every sampler's does
            a = alphas[i + 1]
            z_state = _scaled(ve, names, a)
            out = after_step(callback, i, float(g64[i]), float(g64[i + 1]), z_state)
            if out is not z_state:  # only a returned state moves x~ (no round trip through alpha)
                ve = out.replace(**{k: getattr(out, k) / a for k in names})
    a_end = float(sch.alpha(g64[-1]))
    return _scaled(ve, names, a_end)
