"""How much the squared epsilon error at time t counts, for each objective.

With z_t = alpha_t z_0 + sigma_t eps and an epsilon-prediction network, every term of the
diffusion ELBO is a weight times ||eps - eps_hat||^2 (Kingma et al. 2021, "Variational Diffusion
Models"; EDM's ``compute_loss``):

* ``simple`` (DDPM's L_simple): weight 1; the error is averaged over the (3 + F) N dimensions of
  the molecule so that losses of molecules of different sizes are comparable.
* discrete VLB, step i of T (s = (i - 1) / T, t = i / T): the KL between q(z_s | z_t, z_0) and
  p(z_s | z_t) is 1/2 (SNR(s) / SNR(t) - 1) ||eps - eps_hat||^2. Summing over the T steps is
  estimated without bias by T times the term of one uniform step.
* ``snr_clip`` (EQGAT-diff, Le et al. 2024): the x0 error weighted by clip(SNR(t), lo, hi).
  Since x0 - x0_hat = (sigma / alpha)(eps_hat - eps), that is the same epsilon error weighted by
  clip(SNR, lo, hi) / SNR: the same process and network, another weighting over t (less
  weight at low noise than L_simple, more at high noise).
* continuous VLB (T -> infinity): the same sum becomes the integral of
  -1/2 dlambda/dt ||eps - eps_hat||^2 over t in [0, 1], lambda = log-SNR; estimated by one
  uniform t.
"""

from __future__ import annotations

import torch

from moldiff.noise.schedules import Schedule


def discrete_vlb_weight(schedule: Schedule, t: torch.Tensor, T: int, horizon: float = 1.0) -> torch.Tensor:
    """1/2 (SNR(t - horizon/T) / SNR(t) - 1) for grid times t = i horizon / T, i >= 1."""
    s = (t - horizon / T).clamp(min=0)
    return 0.5 * torch.expm1(schedule.log_snr(s) - schedule.log_snr(t))


def snr_clip_weight(schedule: Schedule, t: torch.Tensor, lo: float = 0.05, hi: float = 1.5) -> torch.Tensor:
    """clip(SNR(t), lo, hi) / SNR(t): EQGAT-diff's x0-error weighting as a weight on the eps error."""
    snr = schedule.snr(t)
    return snr.clamp(lo, hi) / snr


def continuous_vlb_weight(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """-1/2 dlambda/dt (positive)."""
    return -0.5 * schedule.dlog_snr_dt(t)
