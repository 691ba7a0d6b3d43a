"""The probability-flow ODE dz/dt = f(z, t) - 1/2 g(t)^2 score = -1/2 beta(t) (z - eps / sigma_t),
which shares the SDE's marginals. Few-step solvers: Heun (2nd order in t) and DPM-Solver-2
(Lu et al. 2022, exact in the linear part, 2nd order in log-SNR); an adaptive solver from
torchdiffeq for accuracy (and for likelihoods)."""

from __future__ import annotations


import torch

from moldiff.geometry import remove_mean
from moldiff.sampling.base import after_step, molecule_times


def pf_drift(eps_fn, sde, state, t):
    """The drift {field: dz/dt} at the state, at one time t for every molecule."""
    tt = molecule_times(t, state.n_mol, state.pos)
    return sde.pf_drift(state, eps_fn(state, tt), tt)


def heun_step(eps_fn, sde, state, t, s, generator=None):
    d1 = pf_drift(eps_fn, sde, state, t)
    euler = state.replace(**{k: getattr(state, k) + (s - t) * d1[k] for k in sde.names})
    d2 = pf_drift(eps_fn, sde, euler, s)
    return state.replace(**{k: getattr(state, k) + (s - t) * 0.5 * (d1[k] + d2[k]) for k in sde.names})


def dpm2_step(eps_fn, sde, state, t, s, generator=None):
    """Singlestep DPM-Solver-2 with the midpoint in log-SNR."""
    sch, b, n = sde.schedule, state.batch, state.n_mol
    tt, ss = molecule_times(t, n, state.pos), molecule_times(s, n, state.pos)
    lam_t, lam_s = sch.log_snr(tt), sch.log_snr(ss)
    hstep = (lam_s - lam_t) / 2  # in half-log-SNR units (log alpha/sigma)
    uu = sch.t_of_log_snr(lam_t + hstep)  # midpoint: half the log(alpha/sigma) step
    a_t = sde.alpha(tt, b)
    k = hstep[b, None] / 2
    eps = eps_fn(state, tt)
    a_ut, sg_u = sde.alpha(uu, b) / a_t, sde.sigma(uu, b)
    mid = state.replace(**{f: a_ut * getattr(state, f) - sg_u * torch.expm1(k) * eps[f] for f in sde.names})
    eps = eps_fn(mid, uu)
    kk = hstep[b, None]
    a_st, sg_s = sde.alpha(ss, b) / a_t, sde.sigma(ss, b)
    return state.replace(**{f: a_st * getattr(state, f) - sg_s * torch.expm1(kk) * eps[f] for f in sde.names})


def solve_adaptive(eps_fn, sde, state, grid, generator=None, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   callback=None):
    """Integrate from grid[0] to grid[-1] with torchdiffeq (only the ends of ``grid`` matter).
    With a ``callback``, the solve restarts at each grid time after calling it (the hook needs a
    state between steps; without one the solution is a single adaptive solve, as before).
    torchdiffeq integrates one flat vector: the state's fields are flattened into it, in the
    declared order, and the state is rebuilt around each drift evaluation and at the end."""
    if callback is not None:
        for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
            state = solve_adaptive(eps_fn, sde, state, grid[i : i + 2], generator, rtol, atol, method)
            state = after_step(callback, i, float(t), float(s), state)
        return state
    from torchdiffeq import odeint

    b, n = state.batch, state.n_mol
    like = {k: getattr(state, k) for k in sde.names}
    ends = torch.cumsum(torch.tensor([0] + [v.numel() for v in like.values()]), 0).tolist()
    ts = torch.stack([grid[0], grid[-1]]).to(state.pos.dtype)
    lo, hi = float(ts.min()), float(ts.max())

    def unflatten(y):
        return state.replace(**{k: y[a:e].view_as(v) for (k, v), a, e in zip(like.items(), ends[:-1], ends[1:])})

    def f(t, y):
        # The solver's first-step heuristic probes outside [lo, hi], where a schedule may be
        # undefined (alpha^2 > 1 for t < 0); clamping there is harmless, and step_t below keeps
        # every real step inside the interval.
        t = min(max(float(t), lo), hi)
        d = pf_drift(eps_fn, sde, unflatten(y), t)
        return torch.cat([(remove_mean(d[k], b, n) if field.centred else d[k]).reshape(-1) for field in sde.fields for k in [field.name]])

    y0 = torch.cat([v.reshape(-1) for v in like.values()])
    options = {"step_t": ts[1:]} if method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun") else None
    y = odeint(f, y0, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    return unflatten(y)
