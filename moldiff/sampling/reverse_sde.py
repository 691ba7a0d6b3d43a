"""Reverse-time SDE dz = [f(z, t) - g(t)^2 score] dt + g(t) dw-bar, by Euler-Maruyama, and
predictor-corrector sampling with a Langevin corrector controlled by a signal-to-noise ratio
(Song et al. 2021)."""

from __future__ import annotations


from moldiff.geometry import segment_sum
from moldiff.sampling.base import molecule_times


def score(eps_fn, sde, x, h, tt, batch, n):
    return sde.score(*eps_fn(x, h, tt, batch, n), tt, batch)


def euler_maruyama_step(eps_fn, sde, x, h, t, s, batch, n, generator):
    tt = molecule_times(t, n, x)
    dt = t - s
    beta = sde.beta(tt, batch)
    gx, gh = score(eps_fn, sde, x, h, tt, batch, n)
    zx, zh = sde.noise(batch, n, h.shape[1], x, generator)
    x = x + (0.5 * beta * x + beta * gx) * dt + (beta * dt).sqrt() * zx
    h = h + (0.5 * beta * h + beta * gh) * dt + (beta * dt).sqrt() * zh
    return x, h


def _norm(x, h, batch, n):
    """Per-molecule Euclidean norm of (x, h) -> (A, 1)."""
    sq = segment_sum((x**2).sum(1) + (h**2).sum(1), batch, n)
    return sq.sqrt()[batch, None]


def langevin_correct(eps_fn, sde, x, h, t, batch, n, generator, snr: float = 0.1, steps: int = 1):
    """Langevin MCMC at fixed t; the step is set so that ||step * score|| / ||noise|| = snr."""
    tt = molecule_times(t, n, x)
    for _ in range(steps):
        gx, gh = score(eps_fn, sde, x, h, tt, batch, n)
        zx, zh = sde.noise(batch, n, h.shape[1], x, generator)
        eps = 2 * (snr * _norm(zx, zh, batch, n) / _norm(gx, gh, batch, n).clamp(min=1e-12)) ** 2
        x = x + eps * gx + (2 * eps).sqrt() * zx
        h = h + eps * gh + (2 * eps).sqrt() * zh
    return x, h


def pc_step(eps_fn, sde, x, h, t, s, batch, n, generator, snr: float = 0.1, corrector_steps: int = 1):
    x, h = euler_maruyama_step(eps_fn, sde, x, h, t, s, batch, n, generator)
    return langevin_correct(eps_fn, sde, x, h, s, batch, n, generator, snr, corrector_steps)
