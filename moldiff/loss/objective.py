"""The training loss: draw a time per molecule, noise the molecule, score the epsilon prediction.

``DiffusionLoss(sde, layout, weighting, timesteps)(eps_fn, clean)`` returns the per-molecule loss
(M,) and the times used, for a batch of clean molecules as a ``MolState`` (``pos``, the continuous
``atom_type`` features). ``eps_fn`` is any denoiser ``(state, t) -> {field: eps}``; a network
(``nn.denoiser.state_denoiser``) or an analytic model. The error is summed over the fields the
noise process declares (``noise/gaussian_fields.py``), each with its loss weight (1 by default;
``weights`` overrides them for the simple and SNR-clipped losses).

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

from functools import reduce
from operator import add

import torch

from moldiff.data.features import FeatureLayout
from moldiff.geometry import segment_sum
from moldiff.loss.reconstruction import l0_from_pieces
from moldiff.loss.weights import continuous_vlb_weight, discrete_vlb_weight, snr_clip_weight
from moldiff.noise.vp_sde import VPSDE
from moldiff.state import MolState


def squared_errors(eps: dict, pred: dict, batch, n, weights: dict | None = None) -> torch.Tensor:
    """(M,) sum over fields and atoms of ``weight * ||eps - eps_hat||^2`` (weight 1 unless given)."""
    per_atom = [(eps[k] - pred[k]).square().sum(1) for k in eps]
    if weights:
        per_atom = [v if weights.get(k, 1.0) == 1.0 else weights[k] * v for k, v in zip(eps, per_atom)]
    return segment_sum(reduce(add, per_atom), batch, n)


def noised_error(eps_fn, sde, clean: MolState, t, generator=None, weights: dict | None = None):
    """(M,) ||eps - eps_hat||^2 over every field at times t, and the pieces (the noised state, the
    noise, the prediction) the reconstruction terms need."""
    noisy, eps = sde.perturb(clean, t, generator)
    pred = eps_fn(noisy, t)
    return squared_errors(eps, pred, clean.batch, clean.n_mol, weights), (noisy, eps, pred)


WEIGHTINGS = ("simple", "snr_clip", "vlb")


class DiffusionLoss:
    def __init__(self, sde: VPSDE, layout: FeatureLayout, weighting: str = "simple", timesteps: int | None = 1000, t0: float = 0.0,
                 snr_clip: tuple[float, float] = (0.05, 1.5), low_t: tuple[float, float] = (0.0, 0.05), weights: dict | None = None):
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
        unknown = set(weights or {}) - set(sde.names)
        if unknown:
            raise ValueError(f"loss weights: unknown fields {sorted(unknown)}; this model's are {list(sde.names)}")
        self.weights = {f.name: float(f.weight) for f in sde.fields} | {k: float(v) for k, v in (weights or {}).items()}
        if any(not w >= 0 for w in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        if weighting == "vlb" and any(w != 1.0 for w in self.weights.values()):
            raise ValueError(f"the VLB weighs every dimension 1; field weights {self.weights} apply to simple and snr_clip")

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

    # --- terms ---------------------------------------------------------------------------------
    def squared_error(self, eps_fn, clean: MolState, t, generator=None, weights: dict | None = None):
        """(M,) ||eps - eps_hat||^2 and the pieces (noised state, noise, prediction) L0 needs."""
        return noised_error(eps_fn, self.sde, clean, t, generator, weights)

    def reconstruction_terms(self, clean: MolState, t, pieces):
        """(M,) L0 = -log p(x, h | z_t) at time t (EDM's t = 0) from one network call's pieces."""
        return l0_from_pieces(self.sde, clean, t, *pieces, self.layout)

    def reconstruction(self, eps_fn, clean: MolState, t, generator=None):
        """(M,) L0 at times t (M,), constants included."""
        _, pieces = self.squared_error(eps_fn, clean, t, generator)
        return self.reconstruction_terms(clean, t, pieces)

    # --- the loss -----------------------------------------------------------------------------
    def __call__(self, eps_fn, clean: MolState, generator=None):
        batch, n = clean.batch, clean.n_mol
        t = self.sample_times(n, clean.pos, generator)
        if self.weighting in ("simple", "snr_clip"):
            err, _ = self.squared_error(eps_fn, clean, t, generator, self.weights)
            dims = torch.bincount(batch, minlength=n).to(err.dtype) * sum(getattr(clean, k).shape[1] for k in self.sde.names)
            if self.weighting == "snr_clip":
                err = err * snr_clip_weight(self.sde.schedule, t, *self.snr_clip)
            return err / dims, t
        err, pieces = self.squared_error(eps_fn, clean, t, generator)
        sched = self.sde.schedule
        if self.T is None:
            loss = continuous_vlb_weight(sched, t) * err
            t0 = torch.full_like(t, self.t0)
            return loss + self.reconstruction(eps_fn, clean, t0, generator), t
        loss = discrete_vlb_weight(sched, t, self.T) * err
        at_zero = t == 0
        if bool(at_zero.any()):  # the network already saw z_0 for these molecules
            loss = torch.where(at_zero, self.reconstruction_terms(clean, t, pieces), loss)
        return (self.T + 1) * loss, t
