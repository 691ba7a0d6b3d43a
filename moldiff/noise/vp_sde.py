"""The variance-preserving SDE dz = -1/2 beta(t) z dt + sqrt(beta(t)) dw on the Gaussian fields of a
``MolState`` (positions and continuous features, ``gaussian_fields.py``), and the one place where
its epsilon parameterisation is turned into everything else.

Positions live in the zero-centre-of-mass subspace (noise is projected there, and so is every
drift and score built from it); features are ordinary Euclidean. The marginal is
z_t = alpha_t z_0 + sigma_t eps, field by field with one schedule. Time is per molecule: ``t`` has
shape (M,) and is broadcast to atoms through the state's ``batch``.

A denoiser is ``eps_fn(state, t) -> {field: eps}``: one prediction per field. Every consumer
(samplers, guidance energies, bridges, likelihoods) speaks epsilon and converts with the methods
below: ``x0_from_eps`` (a state), ``eps_from_x0``, ``score``, ``pf_drift`` (one value per field),
``transition``. What the network itself outputs is a switch here too (``prediction``: eps, x0 or
v); ``eps_from_output`` turns its output into epsilon, so nothing downstream changes with it.
The per-field formulas are exactly the ones this module applied to the pair (x, h) before the
state existed, field by field in the same order, so seeded runs give the same numbers.
"""

from __future__ import annotations

import torch

from moldiff.noise.gaussian_fields import GAUSSIAN_FIELDS, GaussianField
from moldiff.noise.schedules import Schedule
from moldiff.state import MolState

PREDICTIONS = ("eps", "x0", "v")
Prediction = dict  # {field name: (A, ...) tensor}, one entry per Gaussian field


class VPSDE:
    def __init__(self, schedule: Schedule, prediction: str = "eps", fields: tuple[GaussianField, ...] = GAUSSIAN_FIELDS):
        if prediction not in PREDICTIONS:
            raise ValueError(f"noise.prediction: use one of {PREDICTIONS}, got {prediction!r}")
        self.schedule = schedule
        self.prediction = prediction
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)

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

    # --- the epsilon parameterisation (field by field) ---------------------------------------------
    def x0_from_eps(self, state: MolState, eps: Prediction, t) -> MolState:
        """z_0 estimate (z_t - sigma_t eps) / alpha_t as a state (positions not re-centred)."""
        a, s = self.alpha(t, state.batch), self.sigma(t, state.batch)
        return state.replace(**{k: (getattr(state, k) - s * eps[k]) / a for k in self.names})

    def eps_from_x0(self, state: MolState, clean: Prediction, t) -> Prediction:
        """The noise that takes z_0 (``clean``, one value per field) to z_t: (z_t - alpha_t z_0) / sigma_t."""
        a, s = self.alpha(t, state.batch), self.sigma(t, state.batch)
        return {k: (getattr(state, k) - a * clean[k]) / s for k in self.names}

    def score(self, eps: Prediction, t, batch) -> Prediction:
        """grad log p_t(z) = -eps / sigma_t."""
        s = self.sigma(t, batch)
        return {k: -eps[k] / s for k in self.names}

    def pf_drift(self, state: MolState, eps: Prediction, t) -> Prediction:
        """The probability-flow ODE's dz/dt = f(z, t) - 1/2 g(t)^2 score = -1/2 beta(t) (z - eps / sigma_t)."""
        beta, s = self.beta(t, state.batch), self.sigma(t, state.batch)
        return {k: -0.5 * beta * (getattr(state, k) - eps[k] / s) for k in self.names}

    def eps_from_output(self, out: Prediction, state: MolState, t) -> Prediction:
        """Epsilon from the network's output under ``prediction``: eps itself; x0 (through
        ``eps_from_x0``); or v = alpha_t eps - sigma_t z_0, for which eps = alpha_t v + sigma_t z_t."""
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":
            return self.eps_from_x0(state, out, t)
        a, s = self.alpha(t, state.batch), self.sigma(t, state.batch)
        return {k: a * out[k] + s * getattr(state, k) for k in self.names}

    # --- drawing ------------------------------------------------------------------------------------
    def noise(self, state: MolState, generator=None) -> Prediction:
        """Standard Gaussian noise shaped like the state's fields (positions projected to zero CoM),
        drawn field by field in the declared order."""
        return {f.name: f.draw(state.batch, state.n_mol, getattr(state, f.name).shape[1], getattr(state, f.name).dtype, generator)
                for f in self.fields}

    def perturb(self, clean: MolState, t, generator=None) -> tuple[MolState, Prediction]:
        """Sample z_t | z_0: (the noised state, the noise drawn)."""
        eps = self.noise(clean, generator)
        a, s = self.alpha(t, clean.batch), self.sigma(t, clean.batch)
        return clean.replace(**{k: a * getattr(clean, k) + s * eps[k] for k in self.names}), eps

    def prior(self, batch, n, feat_dim, dtype=torch.float32, generator=None) -> MolState:
        """z_1 ~ N(0, I) as a state (positions in the zero-CoM subspace); ``feat_dim`` the width of
        the fields whose width is the feature layout's."""
        return MolState(batch, n, **{f.name: f.draw(batch, n, f.width or feat_dim, dtype, generator) for f in self.fields})
