"""EDM's reconstruction term L0 = -log p(x, h | z_0): the last, discrete step of the ELBO.

At t = 0 the positions are Gaussian around the network's estimate: p(x | z_0) = N(x; x_hat,
sigma_0^2 / alpha_0^2) on the (N - 1) * 3 zero-CoM dimensions, whose log-density is
-1/2 ||eps - eps_hat||^2 - dof * (log(sigma_0 / alpha_0) + 1/2 log 2 pi).

The features are integers (one-hot entries and atomic numbers), so their likelihood is the mass
of a width-1 bin around the true value under a Gaussian centred at z_0's feature, taken back to
the unscaled units (EDM's ``log_pxh_given_z0_without_constants``):

* one-hot: for each type k, p_k proportional to the mass of [1/2, 3/2] under
  N(onehot_scale * z_h[k], (onehot_scale sigma_0)^2); log p(type) = log p_true - log sum_k p_k.
* charge: the mass of [Z - 1/2, Z + 1/2] under N(charge_scale * z_h[Z], (charge_scale sigma_0)^2).

As in EDM, the feature estimate is z_0 itself (alpha_0 ~ 1 at t = 0), not the network's denoised
estimate, and a 1e-10 floor keeps the log finite.
"""

from __future__ import annotations

import math

import torch

from moldiff.data.features import FeatureLayout
from moldiff.geometry import com_free_dims, segment_sum

_FLOOR = 1e-10


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _bin_log_mass(centred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log of the N(0, sigma^2) mass of [centred - 1/2, centred + 1/2] (EDM's floor included)."""
    return torch.log(_std_normal_cdf((centred + 0.5) / sigma) - _std_normal_cdf((centred - 0.5) / sigma) + _FLOOR)


def position_log_prob(eps_x, eps_x_hat, log_sigma_over_alpha, batch, n, constants: bool = True):
    """(M,) log p(x | z_0) of the zero-CoM positions; ``log_sigma_over_alpha`` (M,) at t = 0."""
    logp = -0.5 * segment_sum((eps_x - eps_x_hat).square().sum(1), batch, n)
    if constants:
        dof = com_free_dims(batch, n).to(logp.dtype)
        logp = logp - dof * (log_sigma_over_alpha + 0.5 * math.log(2 * math.pi))
    return logp


def feature_log_prob(h0, z_h, sigma0, layout: FeatureLayout, batch, n):
    """(M,) log p(h | z_0) of the integer features; ``sigma0`` (A, 1) per atom, ``h0`` scaled features."""
    sig = sigma0.reshape(-1, 1)
    onehot = layout.onehot(h0)
    logits = _bin_log_mass(layout.onehot(z_h) - 1.0, sig * layout.onehot_scale)
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_atom = (log_probs * onehot).sum(1)
    if layout.include_charges:
        centred = layout.charges(z_h) - layout.charges(h0)
        per_atom = per_atom + _bin_log_mass(centred, sig[:, 0] * layout.charge_scale)
    return segment_sum(per_atom, batch, n)


def l0_from_pieces(sde, clean, t, noisy, eps, pred, layout: FeatureLayout | None = None):
    """(M,) L0 = -log p(x, h | z_t), constants included, from one network call at times t (EDM's
    t = 0): the clean state, the noised one, the noise and the prediction (one value per field);
    the loss's VLB weighting and the ELBO share it. ``layout=None``: continuous features,
    Gaussian like the positions on N * F dimensions."""
    batch, n = clean.batch, clean.n_mol
    log_s_over_a = -0.5 * sde.schedule.log_snr(t)
    logp = position_log_prob(eps["pos"], pred["pos"], log_s_over_a, batch, n)
    h0 = clean.atom_type
    if layout is not None:
        return -(logp + feature_log_prob(h0, noisy.atom_type, sde.sigma(t, batch), layout, batch, n))
    dof = torch.bincount(batch, minlength=n).to(h0.dtype) * h0.shape[1]
    sq = segment_sum((eps["atom_type"] - pred["atom_type"]).square().sum(1), batch, n)
    return -(logp - 0.5 * sq - dof * (log_s_over_a + 0.5 * math.log(2 * math.pi)))
