"""The training loss: draw a time per molecule, noise the molecule, score the epsilon prediction.

``DiffusionLoss(sde, layout, weighting, timesteps)(eps_fn, x0, h0, batch, n)`` returns the
per-molecule loss (M,) and the times used. ``eps_fn`` is any ``(x, h, t, batch, n) -> (eps_x,
eps_h)``; a network or an analytic model.

* ``weighting="simple"``: the mean squared epsilon error per dimension (DDPM's L_simple; EDM's
  ``l2`` training loss), t uniform on the grid i / T, i = 1..T, or on (0, 1] when continuous.
* ``weighting="snr_clip"``: the same per-dimension error weighted by clip(SNR, lo, hi) / SNR,
  i.e. EQGAT-diff's x0-error weighting (``weights.py``).
* ``low_t=(fraction, t_max)``: that fraction of each batch draws its times at or below t_max
  (UniGEM's oversampling of low noise, where whole molecules are decided); the rest as usual.
* ``weighting="vlb"``: an unbiased one-sample estimate of the diffusion part of the ELBO
  (``weights.py``). Discrete: i uniform on 0..T, the term scaled by T + 1, and at i = 0 the
  reconstruction L0 (``reconstruction.py``). Continuous: -1/2 dlambda/dt ||eps - eps_hat||^2 at
  uniform t, plus L0 at ``t0`` from a second network call.

Prior KL and log p(N) do not depend on the network and are left to the likelihood code.
"""

from __future__ import annotations

import torch

from moldiff.data.features import FeatureLayout
from moldiff.geometry import segment_sum
from moldiff.loss.reconstruction import l0_from_pieces
from moldiff.loss.weights import continuous_vlb_weight, discrete_vlb_weight, snr_clip_weight
from moldiff.noise.vp_sde import VPSDE


def noised_error(eps_fn, sde, x0, h0, t, batch, n, generator=None):
    """(M,) ||eps - eps_hat||^2 over positions and features at times t, and the pieces
    (x_t, h_t, eps_x, eps_h, eps_x_hat, eps_h_hat) the reconstruction terms need."""
    xt, ht, ex, eh = sde.perturb(x0, h0, t, batch, n, generator)
    px, ph = eps_fn(xt, ht, t, batch, n)
    err = segment_sum((ex - px).square().sum(1) + (eh - ph).square().sum(1), batch, n)
    return err, (xt, ht, ex, eh, px, ph)


WEIGHTINGS = ("simple", "snr_clip", "vlb")


class DiffusionLoss:
    def __init__(self, sde: VPSDE, layout: FeatureLayout, weighting: str = "simple", timesteps: int | None = 1000, t0: float = 0.0,
                 snr_clip: tuple[float, float] = (0.05, 1.5), low_t: tuple[float, float] = (0.0, 0.05)):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not 0.0 < float(snr_clip[0]) <= float(snr_clip[1]):
            raise ValueError(f"snr_clip must be 0 < lo <= hi, got {list(snr_clip)}")
        if not (0.0 <= float(low_t[0]) <= 1.0 and 0.0 < float(low_t[1]) <= 1.0):
            raise ValueError(f"low_t must be (fraction in [0, 1], t_max in (0, 1]), got {list(low_t)}")
        if weighting == "vlb" and float(low_t[0]) > 0:
            raise ValueError("low_t oversampling would bias the VLB estimate; use it with simple or snr_clip")
        self.snr_clip = (float(snr_clip[0]), float(snr_clip[1]))
        self.low_t = (float(low_t[0]), float(low_t[1]))
        if timesteps is not None and int(timesteps) < 1:
            raise ValueError(f"timesteps must be a positive integer or None (continuous), got {timesteps!r}")
        self.sde, self.layout, self.weighting = sde, layout, weighting
        if weighting == "vlb" and float(sde.schedule.sigma(torch.tensor(float(t0), dtype=torch.float64))) == 0.0:
            raise ValueError(f"the VLB needs sigma(t0) > 0 for its L0 term; this schedule has sigma({t0}) = 0: set t0 > 0")
        self.T = None if timesteps is None else int(timesteps)
        self.t0 = float(t0)

    # --- time ---------------------------------------------------------------------------------
    def sample_times(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        """(M,) times: grid points i / T or uniform on (0, 1]; with ``low_t``, the first
        round(fraction n) of them at or below t_max (batches are shuffled, so any would do)."""
        t = self._times(n, 1.0, like, generator)
        k = round(self.low_t[0] * n)
        if k:
            t[:k] = self._times(k, self.low_t[1], like, generator)
        return t

    def _times(self, n: int, t_max: float, like: torch.Tensor, generator) -> torch.Tensor:
        if self.T is None:
            u = torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
            return t_max * (1.0 - u)  # (0, t_max]: t = 0 has no noise to predict
        low = 0 if self.weighting == "vlb" else 1
        i = torch.randint(low, max(low, round(t_max * self.T)) + 1, (n,), generator=generator, device=like.device)
        return i.to(like.dtype) / self.T

    # --- terms --------------------------------------------------------------------------------
    def squared_error(self, eps_fn, x0, h0, t, batch, n, generator=None):
        """(M,) ||eps - eps_hat||^2 and the pieces (h_t, eps_x, eps_h, eps_x_hat, eps_h_hat) L0 needs."""
        err, (_, ht, ex, eh, px, ph) = noised_error(eps_fn, self.sde, x0, h0, t, batch, n, generator)
        return err, (ht, ex, eh, px, ph)

    def reconstruction_terms(self, h0, t, pieces, batch, n):
        """(M,) L0 = -log p(x, h | z_t) at time t (EDM's t = 0) from one network call's pieces."""
        return l0_from_pieces(self.sde, h0, t, *pieces, batch, n, self.layout)

    def reconstruction(self, eps_fn, x0, h0, t, batch, n, generator=None):
        """(M,) L0 at times t (M,), constants included."""
        _, pieces = self.squared_error(eps_fn, x0, h0, t, batch, n, generator)
        return self.reconstruction_terms(h0, t, pieces, batch, n)

    # --- the loss -----------------------------------------------------------------------------
    def __call__(self, eps_fn, x0, h0, batch, n, generator=None):
        t = self.sample_times(n, x0, generator)
        err, pieces = self.squared_error(eps_fn, x0, h0, t, batch, n, generator)
        if self.weighting in ("simple", "snr_clip"):
            dims = torch.bincount(batch, minlength=n).to(err.dtype) * (3 + h0.shape[1])
            if self.weighting == "snr_clip":
                err = err * snr_clip_weight(self.sde.schedule, t, *self.snr_clip)
            return err / dims, t
        sched = self.sde.schedule
        if self.T is None:
            loss = continuous_vlb_weight(sched, t) * err
            t0 = torch.full_like(t, self.t0)
            return loss + self.reconstruction(eps_fn, x0, h0, t0, batch, n, generator), t
        loss = discrete_vlb_weight(sched, t, self.T) * err
        at_zero = t == 0
        if bool(at_zero.any()):  # the network already saw z_0 for these molecules
            loss = torch.where(at_zero, self.reconstruction_terms(h0, t, pieces, batch, n), loss)
        return (self.T + 1) * loss, t
