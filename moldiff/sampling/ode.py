"""The probability-flow ODE dz/dt = f(z, t) - 1/2 g(t)^2 score = -1/2 beta(t) (z - eps / sigma_t),
which shares the SDE's marginals. Few-step solvers: Heun (2nd order in t) and DPM-Solver-2
(Lu et al. 2022, exact in the linear part, 2nd order in log-SNR); an adaptive solver from
torchdiffeq for accuracy (and for likelihoods)."""

from __future__ import annotations


import torch

from moldiff.geometry import remove_mean
from moldiff.sampling.base import after_step, molecule_times


def pf_drift(eps_fn, sde, x, h, t, batch, n):
    tt = molecule_times(t, n, x)
    return sde.pf_drift(x, h, *eps_fn(x, h, tt, batch, n), tt, batch)


def heun_step(eps_fn, sde, x, h, t, s, batch, n, generator=None):
    dx1, dh1 = pf_drift(eps_fn, sde, x, h, t, batch, n)
    xe, he = x + (s - t) * dx1, h + (s - t) * dh1
    dx2, dh2 = pf_drift(eps_fn, sde, xe, he, s, batch, n)
    return x + (s - t) * 0.5 * (dx1 + dx2), h + (s - t) * 0.5 * (dh1 + dh2)


def dpm2_step(eps_fn, sde, x, h, t, s, batch, n, generator=None):
    """Singlestep DPM-Solver-2 with the midpoint in log-SNR."""
    sch = sde.schedule
    tt, ss = molecule_times(t, n, x), molecule_times(s, n, x)
    lam_t, lam_s = sch.log_snr(tt), sch.log_snr(ss)
    hstep = (lam_s - lam_t) / 2  # in half-log-SNR units (log alpha/sigma)
    uu = sch.t_of_log_snr(lam_t + hstep)  # midpoint: half the log(alpha/sigma) step
    a_t = sde.alpha(tt, batch)
    k = hstep[batch, None] / 2
    ex, eh = eps_fn(x, h, tt, batch, n)
    a_ut, sg_u = sde.alpha(uu, batch) / a_t, sde.sigma(uu, batch)
    xu = a_ut * x - sg_u * torch.expm1(k) * ex
    hu = a_ut * h - sg_u * torch.expm1(k) * eh
    ex, eh = eps_fn(xu, hu, uu, batch, n)
    kk = hstep[batch, None]
    a_st, sg_s = sde.alpha(ss, batch) / a_t, sde.sigma(ss, batch)
    return a_st * x - sg_s * torch.expm1(kk) * ex, a_st * h - sg_s * torch.expm1(kk) * eh


def solve_adaptive(eps_fn, sde, x, h, grid, batch, n, generator=None, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   callback=None):
    """Integrate from grid[0] to grid[-1] with torchdiffeq (only the ends of ``grid`` matter).
    With a ``callback``, the solve restarts at each grid time after calling it (the hook needs a
    state between steps; without one the solution is a single adaptive solve, as before)."""
    if callback is not None:
        for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
            x, h = solve_adaptive(eps_fn, sde, x, h, grid[i : i + 2], batch, n, generator, rtol, atol, method)
            x, h = after_step(callback, i, float(t), float(s), x, h, batch, n)
        return x, h
    from torchdiffeq import odeint

    nx = x.numel()
    ts = torch.stack([grid[0], grid[-1]]).to(x.dtype)
    lo, hi = float(ts.min()), float(ts.max())

    def f(t, y):
        # The solver's first-step heuristic probes outside [lo, hi], where a schedule may be
        # undefined (alpha^2 > 1 for t < 0); clamping there is harmless, and step_t below keeps
        # every real step inside the interval.
        t = min(max(float(t), lo), hi)
        dx, dh = pf_drift(eps_fn, sde, y[:nx].view_as(x), y[nx:].view_as(h), t, batch, n)
        return torch.cat([remove_mean(dx, batch, n).reshape(-1), dh.reshape(-1)])

    y0 = torch.cat([x.reshape(-1), h.reshape(-1)])
    options = {"step_t": ts[1:]} if method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun") else None
    y = odeint(f, y0, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    return y[:nx].view_as(x), y[nx:].view_as(h)
