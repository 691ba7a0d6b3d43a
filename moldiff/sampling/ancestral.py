"""DDPM ancestral sampling: exact Gaussian posterior steps q(z_s | z_t, z_0 = estimate)."""

from __future__ import annotations

from moldiff.sampling.base import molecule_times


def ancestral_step(eps_fn, sde, x, h, t, s, batch, n, generator, late_noise: float = 1.0, late_t: float = 0.0):
    """z_s = z_t / a_ts - s2_ts / (a_ts sigma_t) eps + sigma_{t->s} noise, with a_ts = alpha_t / alpha_s,
    s2_ts = sigma_t^2 - a_ts^2 sigma_s^2 and sigma_{t->s} = sqrt(s2_ts) sigma_s / sigma_t.
    ``late_noise`` scales the injected noise of the steps from t <= ``late_t`` (a deliberate
    deviation from the exact posterior that some samplers use to sharpen the last steps)."""
    tt, ss = molecule_times(t, n, x), molecule_times(s, n, x)
    ex, eh = eps_fn(x, h, tt, batch, n)
    a_ts, s2_ts = sde.transition(ss, tt, batch)
    sg_t, sg_s = sde.sigma(tt, batch), sde.sigma(ss, batch)
    std = s2_ts.sqrt() * sg_s / sg_t
    if t <= late_t:
        std = late_noise * std
    zx, zh = sde.noise(batch, n, h.shape[1], x, generator)
    x = x / a_ts - s2_ts / (a_ts * sg_t) * ex + std * zx
    h = h / a_ts - s2_ts / (a_ts * sg_t) * eh + std * zh
    return x, h
