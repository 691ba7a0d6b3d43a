"""The variance-preserving SDE dz = -1/2 beta(t) z dt + sqrt(beta(t)) dw on z = (positions, features),
and the one place where its epsilon parameterisation is turned into everything else.

Positions live in the zero-centre-of-mass subspace (noise is projected there, and so is every
drift and score built from it); features are ordinary Euclidean. The marginal is
z_t = alpha_t z_0 + sigma_t eps. Time is per molecule: ``t`` has shape (M,) and is broadcast to
atoms through ``batch``.

Every consumer (samplers, guidance energies, bridges, likelihoods) speaks epsilon and converts
with the methods below: ``x0_from_eps``, ``eps_from_x0``, ``score``, ``pf_drift`` and
``transition``. What the network itself outputs is a switch here too (``prediction``: eps, x0 or
v); ``eps_from_output`` turns its output into epsilon, so nothing downstream changes with it.
"""

from __future__ import annotations

import torch

from moldiff.geometry import centered_noise
from moldiff.noise.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")


class VPSDE:
    def __init__(self, schedule: Schedule, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"noise.prediction: use one of {PREDICTIONS}, got {prediction!r}")
        self.schedule = schedule
        self.prediction = prediction

    # Per-atom coefficients (A, 1) from per-molecule times (M,).
    def alpha(self, t, batch):
        return self.schedule.alpha(t)[batch, None]

    def sigma(self, t, batch):
        return self.schedule.sigma(t)[batch, None]

    def beta(self, t, batch):
        return self.schedule.beta(t)[batch, None]

    def transition(self, s, t, batch):
        """alpha_{t|s} = alpha_t / alpha_s and sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 of
        q(z_t | z_s), per atom (A, 1), for per-molecule times s <= t (M,)."""
        a = self.alpha(t, batch) / self.alpha(s, batch)
        v = self.sigma(t, batch) ** 2 - a**2 * self.sigma(s, batch) ** 2
        return a, v.clamp_min(0.0)

    # --- the epsilon parameterisation -------------------------------------------------------------
    def x0_from_eps(self, x, h, eps_x, eps_h, t, batch):
        """z_0 estimate (z_t - sigma_t eps) / alpha_t (positions not re-centred)."""
        a, s = self.alpha(t, batch), self.sigma(t, batch)
        return (x - s * eps_x) / a, (h - s * eps_h) / a

    def eps_from_x0(self, x, h, x0, h0, t, batch):
        """The noise that takes z_0 to z_t: (z_t - alpha_t z_0) / sigma_t."""
        a, s = self.alpha(t, batch), self.sigma(t, batch)
        return (x - a * x0) / s, (h - a * h0) / s

    def score(self, eps_x, eps_h, t, batch):
        """grad log p_t(z) = -eps / sigma_t."""
        s = self.sigma(t, batch)
        return -eps_x / s, -eps_h / s

    def pf_drift(self, x, h, eps_x, eps_h, t, batch):
        """The probability-flow ODE's dz/dt = f(z, t) - 1/2 g(t)^2 score = -1/2 beta(t) (z - eps / sigma_t)."""
        beta, s = self.beta(t, batch), self.sigma(t, batch)
        return -0.5 * beta * (x - eps_x / s), -0.5 * beta * (h - eps_h / s)

    def eps_from_output(self, out_x, out_h, x, h, t, batch):
        """Epsilon from the network's output under ``prediction``: eps itself; x0 (through
        ``eps_from_x0``); or v = alpha_t eps - sigma_t z_0, for which eps = alpha_t v + sigma_t z_t."""
        if self.prediction == "eps":
            return out_x, out_h
        if self.prediction == "x0":
            return self.eps_from_x0(x, h, out_x, out_h, t, batch)
        a, s = self.alpha(t, batch), self.sigma(t, batch)
        return a * out_x + s * x, a * out_h + s * h

    # --- drawing ------------------------------------------------------------------------------------
    def noise(self, batch, n, feat_dim, like: torch.Tensor, generator=None):
        """(eps_x, eps_h): standard Gaussian, positions projected to zero CoM."""
        eps_x = centered_noise(batch, n, generator, like.dtype)
        eps_h = torch.randn((len(batch), feat_dim), generator=generator, dtype=like.dtype, device=like.device)
        return eps_x, eps_h

    def perturb(self, x0, h0, t, batch, n, generator=None):
        """Sample z_t | z_0: returns (x_t, h_t, eps_x, eps_h)."""
        eps_x, eps_h = self.noise(batch, n, h0.shape[1], x0, generator)
        a, s = self.alpha(t, batch), self.sigma(t, batch)
        return a * x0 + s * eps_x, a * h0 + s * eps_h, eps_x, eps_h

    def prior(self, batch, n, feat_dim, dtype=torch.float32, generator=None):
        """z_1 ~ N(0, I) (positions in the zero-CoM subspace)."""
        return self.noise(batch, n, feat_dim, torch.empty(0, dtype=dtype, device=batch.device), generator)
