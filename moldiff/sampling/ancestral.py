"""DDPM ancestral sampling: exact Gaussian posterior steps q(z_s | z_t, z_0 = estimate)."""

from __future__ import annotations

from moldiff.sampling.base import molecule_times


def ancestral_step(eps_fn, sde, state, t, s, generator, late_noise: float = 1.0, late_t: float = 0.0):
    """z_s = z_t / a_ts - s2_ts / (a_ts sigma_t) eps + sigma_{t->s} noise, with a_ts = alpha_t / alpha_s,
    s2_ts = sigma_t^2 - a_ts^2 sigma_s^2 and sigma_{t->s} = sqrt(s2_ts) sigma_s / sigma_t, for every
    field of the state. ``late_noise`` scales the injected noise of the steps from t <= ``late_t`` (a
    deliberate deviation from the exact posterior that some samplers use to sharpen the last steps)."""
    b, n = state.batch, state.n_mol
    tt, ss = molecule_times(t, n, state.pos), molecule_times(s, n, state.pos)
    eps = eps_fn(state, tt)
    a_ts, s2_ts = sde.transition(ss, tt, b)
    sg_t, sg_s = sde.sigma(tt, b), sde.sigma(ss, b)
    std = s2_ts.sqrt() * sg_s / sg_t
    if t <= late_t:
        std = late_noise * std
    z = sde.noise(state, generator)
    return state.replace(**{k: getattr(state, k) / a_ts - s2_ts / (a_ts * sg_t) * eps[k] + std * z[k] for k in sde.names})
