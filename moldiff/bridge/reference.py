"""The VP process as the bridge's reference: its Gaussian bridges and the two Markov steps built on them.

For times s < t < r of the VP process (alpha_{t|s} = alpha_t / alpha_s, sigma^2_{t|s} = sigma_t^2 -
alpha_{t|s}^2 sigma_s^2), the reference pinned at z_s and z_r is Gaussian at t:

    precision = 1 / sigma^2_{t|s} + alpha_{r|t}^2 / sigma^2_{r|t}
    mean      = (alpha_{t|s} z_s / sigma^2_{t|s} + alpha_{r|t} z_r / sigma^2_{r|t}) / precision

One formula serves three jobs:
* bridge samples z_t | (x_0, x_T) for the matching losses (s = 0, r = T, the horizon);
* the backward step t -> s towards a predicted x_0 (s = 0 pinned at x0_hat, r = t pinned at z_t:
  exactly the DDPM ancestral step, so a refined backward network samples with ``ancestral``);
* the forward step's mean t -> u towards a predicted x_T (s = t pinned at z_t, r = T at xT_hat).

Positions stay in the zero-CoM subspace: the means are combinations of centred vectors and the
noise is centred (``VPSDE.noise``).
"""

from __future__ import annotations

import torch

from moldiff.geometry import remove_mean
from moldiff.state import MolState


def pinned_gaussian(sde, s, t, r, batch):
    """Weights (w_s, w_r) and variance of z_t given z_s and z_r: mean = w_s z_s + w_r z_r."""
    a_ts, v_ts = sde.transition(s, t, batch)
    a_rt, v_rt = sde.transition(t, r, batch)
    # variance = v_ts v_rt / (v_rt + a_rt^2 v_ts): written without dividing by v_ts or v_rt, so t = s or t = r is exact
    denom = (v_rt + a_rt**2 * v_ts).clamp_min(torch.finfo(v_ts.dtype).tiny)
    return a_ts * v_rt / denom, a_rt * v_ts / denom, v_ts * v_rt / denom


def _pinned(sde, w_a, a: MolState, w_b, b: dict, std, noise: dict) -> MolState:
    """w_a a + w_b b + std noise, field by field of ``a``'s state (centred fields re-centred before the noise)."""
    out = {}
    for field in sde.fields:
        k = field.name
        mean = w_a * getattr(a, k) + w_b * b[k]
        out[k] = (remove_mean(mean, a.batch, a.n_mol) if field.centred else mean) + std * noise[k]
    return a.replace(**out)


def bridge_sample(sde, clean: MolState, end: MolState, t, T, generator=None) -> MolState:
    """z_t of the reference bridge from the state ``clean`` at time 0 to ``end`` at time T; t, T per molecule (M,)."""
    zero = torch.zeros_like(t)
    w0, wT, var = pinned_gaussian(sde, zero, t, T, clean.batch)
    noise = sde.noise(clean, generator)
    return _pinned(sde, w0, clean, wT, end.take(sde.names), var.sqrt(), noise)


def forward_step(endpoint_fn, sde, state: MolState, t, u, T, generator=None) -> MolState:
    """One step t -> u (<= T) of the forward process whose network predicts the endpoint:
    ``endpoint_fn(state, t) -> predicted end state``. The mean is the reference bridge's from
    z_t to the predicted endpoint; the spread is the reference's own transition sigma_{u|t}, not the
    pinned bridge's: the endpoint is only predicted, and a Markov process with the reference's
    diffusion has the reference's small-step variance (the bridge's would shrink every step; measured
    on Gaussian clouds: x_T variance 0.9 instead of 1 at 40 steps)."""
    end = endpoint_fn(state, t)
    wt, wT, _ = pinned_gaussian(sde, t, u, T, state.batch)
    _, var = sde.transition(t, u, state.batch)
    noise = sde.noise(state, generator)
    return _pinned(sde, wt, state, wT, end.take(sde.names), var.sqrt(), noise)


def reference_endpoint(sde, state: MolState, t, T, residual: dict) -> MolState:
    """The forward network's parameterisation: xT_hat = alpha_{T|t} z_t + sigma_{T|t} r, the
    reference's own mean plus a correction r on the noise scale (r = 0: the reference process)."""
    a, v = sde.transition(t, T, state.batch)
    s = v.sqrt()
    return state.replace(**{k: a * getattr(state, k) + s * residual[k] for k in sde.names})
