"""The variance-preserving SDE dz = -1/2 beta(t) z dt + sqrt(beta(t)) dw on z = (positions, features).

Positions live in the zero-centre-of-mass subspace (noise is projected there, and so is every
drift and score built from it); features are ordinary Euclidean. The marginal is
z_t = alpha_t z_0 + sigma_t eps, and a network that predicts eps gives the score -eps / sigma_t.
Time is per molecule: ``t`` has shape (M,) and is broadcast to atoms through ``batch``.
"""

from __future__ import annotations

import torch

from moldiff.geometry import centered_noise
from moldiff.noise.schedules import Schedule


class VPSDE:
    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    # Per-atom coefficients (A, 1) from per-molecule times (M,).
    def alpha(self, t, batch):
        return self.schedule.alpha(t)[batch, None]

    def sigma(self, t, batch):
        return self.schedule.sigma(t)[batch, None]

    def beta(self, t, batch):
        return self.schedule.beta(t)[batch, None]

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
