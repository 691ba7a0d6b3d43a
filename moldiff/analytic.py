"""Gaussian point clouds: data whose diffused score is known in closed form.

Positions: x_0 = P (eps D), P the per-molecule centring projection, D = diag(axis_std) acting
on the spatial axis, so each axis of a molecule is N(0, d_a^2 I) inside the (N - 1)-dimensional
zero-CoM subspace. Features: N(0, feat_std^2) per dimension. Under the VP process the marginal
stays Gaussian with per-axis variance v_a(t) = alpha_t^2 d_a^2 + sigma_t^2, hence the exact
eps(z_t, t) = sigma_t z_t / v(t). Samplers, likelihoods and bridges are tested against it. Molecules
are ``MolState`` batches as the Gaussian model's (positions ``pos``, features ``atom_type``).
"""

from __future__ import annotations

import math

import torch

from moldiff.geometry import atom_counts, remove_mean, segment_sum
from moldiff.noise.vp_sde import VPSDE
from moldiff.state import MolState


class GaussianPointClouds:
    def __init__(self, sde: VPSDE, axis_std=(0.5, 1.0, 2.0), feat_std=(0.3, 1.5)):
        self.sde = sde
        self.axis_std = torch.as_tensor(axis_std, dtype=torch.float64)
        self.feat_std = torch.as_tensor(feat_std, dtype=torch.float64)

    @property
    def feat_dim(self) -> int:
        return len(self.feat_std)

    def sample(self, batch, n, generator=None, dtype=torch.float64) -> MolState:
        x = torch.randn((len(batch), 3), generator=generator, dtype=dtype) * self.axis_std.to(dtype)
        h = torch.randn((len(batch), self.feat_dim), generator=generator, dtype=dtype) * self.feat_std.to(dtype)
        return MolState(batch, n, pos=remove_mean(x, batch, n), atom_type=h)

    def variances(self, t, batch, dtype):
        a2 = self.sde.schedule.alpha2(t)[batch, None].to(dtype)
        vx = a2 * self.axis_std.to(dtype) ** 2 + (1 - a2)
        vh = a2 * self.feat_std.to(dtype) ** 2 + (1 - a2)
        return vx, vh

    def eps(self, state: MolState, t):
        """The exact eps-prediction E[eps | z_t] per field (an ``eps_fn`` for every sampler)."""
        x, h, batch, n = state.pos, state.atom_type, state.batch, state.n_mol
        vx, vh = self.variances(t, batch, x.dtype)
        sg = self.sde.sigma(t, batch).to(x.dtype)
        return {"pos": sg * remove_mean(x, batch, n) / vx, "atom_type": sg * h / vh}

    def log_prob(self, state: MolState, t=None):
        """Exact log-density per molecule (M,) w.r.t. Lebesgue measure on the zero-CoM subspace
        ((N - 1) * 3 dims) times R^(N * F); at time t if given, else of the data."""
        x, h, batch, n = state.pos, state.atom_type, state.batch, state.n_mol
        dtype = x.dtype
        if t is None:
            vx = (self.axis_std.to(dtype) ** 2).expand(len(batch), 3)
            vh = (self.feat_std.to(dtype) ** 2).expand(len(batch), self.feat_dim)
        else:
            vx, vh = self.variances(t, batch, dtype)
        counts = atom_counts(batch, n).to(dtype)
        quad = segment_sum((x**2 / vx).sum(1) + (h**2 / vh).sum(1), batch, n)
        # v is constant within a molecule; each axis spans N - 1 dimensions of the subspace.
        logdet_x = (counts - 1) * segment_sum(torch.log(vx).sum(1), batch, n) / counts
        logdet_h = segment_sum(torch.log(vh).sum(1), batch, n)
        dims = (counts - 1) * 3 + counts * self.feat_dim
        return -0.5 * (quad + logdet_x + logdet_h + dims * math.log(2 * math.pi))
