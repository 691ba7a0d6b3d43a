"""Reverse-time SDE dz = [f(z, t) - g(t)^2 score] dt + g(t) dw-bar, by Euler-Maruyama, and
predictor-corrector sampling with a Langevin corrector controlled by a signal-to-noise ratio
(Song et al. 2021)."""

from __future__ import annotations

from functools import reduce
from operator import add

from moldiff.geometry import segment_sum
from moldiff.sampling.base import molecule_times


def score(eps_fn, sde, state, tt):
    return sde.score(eps_fn(state, tt), tt, state.batch)


def euler_maruyama_step(eps_fn, sde, state, t, s, generator):
    tt = molecule_times(t, state.n_mol, state.pos)
    dt = t - s
    beta = sde.beta(tt, state.batch)
    g = score(eps_fn, sde, state, tt)
    z = sde.noise(state, generator)
    return state.replace(**{k: v + (0.5 * beta * v + beta * g[k]) * dt + (beta * dt).sqrt() * z[k]
                            for k in sde.names for v in [getattr(state, k)]})


def _norm(values: dict, batch, n):
    """Per-molecule Euclidean norm of all fields together -> (A, 1)."""
    sq = segment_sum(reduce(add, [(v**2).sum(1) for v in values.values()]), batch, n)
    return sq.sqrt()[batch, None]


def langevin_correct(eps_fn, sde, state, t, generator, snr: float = 0.1, steps: int = 1):
    """Langevin MCMC at fixed t; the step is set so that ||step * score|| / ||noise|| = snr."""
    b, n = state.batch, state.n_mol
    tt = molecule_times(t, n, state.pos)
    for _ in range(steps):
        g = score(eps_fn, sde, state, tt)
        z = sde.noise(state, generator)
        eps = 2 * (snr * _norm(z, b, n) / _norm(g, b, n).clamp(min=1e-12)) ** 2
        state = state.replace(**{k: getattr(state, k) + eps * g[k] + (2 * eps).sqrt() * z[k] for k in sde.names})
    return state


def pc_step(eps_fn, sde, state, t, s, generator, snr: float = 0.1, corrector_steps: int = 1):
    state = euler_maruyama_step(eps_fn, sde, state, t, s, generator)
    return langevin_correct(eps_fn, sde, state, s, generator, snr, corrector_steps)
