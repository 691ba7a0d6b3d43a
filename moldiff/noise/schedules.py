"""Noise schedules of the variance-preserving process, in closed form.

Each schedule gives alpha_t^2 on t in [0, 1]; everything else follows (VP: sigma_t^2 = 1 - alpha_t^2):
log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) and beta(t) = -d log(alpha_t^2) / dt, the rate of the
SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw. Closed forms are checked against numerical
integration of beta in the tests.

* ``LinearSchedule``: the textbook VP SDE, beta(t) = beta_0 + t (beta_1 - beta_0), 0.1 -> 20.
* ``CosineSchedule``: Nichol & Dhariwal's f(t) = cos^2((t + s) / (1 + s) * pi / 2), s = 0.008.
* ``PolynomialSchedule``: EDM's polynomial-2, alpha^2 = (1 - t^2)^2, squeezed into
  [precision, 1 - precision] as EDM does (precision 1e-5).

Discrete DDPM with T steps is the same process on the grid t_i = i / T:
beta_i = 1 - alpha^2(t_i) / alpha^2(t_{i-1}) (``discrete_betas``); beta_i ~ beta(t_i) / T as T grows.
"""

from __future__ import annotations

import math

import torch


class Schedule:
    """alpha^2(t) and its time derivative; the rest is derived here once for all schedules."""

    def alpha2(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha2_dt(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t):
        return self.alpha2(t).sqrt()

    def sigma2(self, t):
        return 1 - self.alpha2(t)

    def sigma(self, t):
        return self.sigma2(t).sqrt()

    def log_snr(self, t):
        a2 = self.alpha2(t)
        return torch.log(a2) - torch.log1p(-a2)

    def snr(self, t):
        return torch.exp(self.log_snr(t))

    def beta(self, t):
        return -self.dalpha2_dt(t) / self.alpha2(t)

    def dlog_snr_dt(self, t):
        """d lambda / dt = alpha2' / (alpha2 sigma2) (negative: SNR falls with t)."""
        a2 = self.alpha2(t)
        return self.dalpha2_dt(t) / (a2 * (1 - a2))

    def t_of_log_snr(self, lam: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """Inverse of lambda(t) by bisection (lambda is monotone); used by log-SNR time grids."""
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # still too little noise: go later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def discrete_betas(self, T: int, dtype=torch.float64) -> torch.Tensor:
        """DDPM's beta_1..beta_T on the grid t_i = i / T."""
        t = torch.linspace(0, 1, T + 1, dtype=dtype)
        a2 = self.alpha2(t)
        return 1 - a2[1:] / a2[:-1]


class LinearSchedule(Schedule):
    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        self.beta_0, self.beta_1 = beta_0, beta_1

    def alpha2(self, t):
        return torch.exp(-(self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2))

    def dalpha2_dt(self, t):
        return -(self.beta_0 + (self.beta_1 - self.beta_0) * t) * self.alpha2(t)

    def beta(self, t):  # exact, no division
        return self.beta_0 + (self.beta_1 - self.beta_0) * t


class CosineSchedule(Schedule):
    def __init__(self, s: float = 0.008, precision: float = 1e-5):
        self.s, self.precision = s, precision
        self._f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2

    def _u(self, t):
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def alpha2(self, t):
        f = torch.cos(self._u(t)) ** 2 / self._f0
        return (1 - 2 * self.precision) * f + self.precision

    def dalpha2_dt(self, t):
        df = -torch.sin(2 * self._u(t)) * math.pi / (2 * (1 + self.s)) / self._f0
        return (1 - 2 * self.precision) * df


class PolynomialSchedule(Schedule):
    def __init__(self, power: float = 2.0, precision: float = 1e-5):
        self.power, self.precision = power, precision

    def alpha2(self, t):
        return (1 - 2 * self.precision) * (1 - t**self.power) ** 2 + self.precision

    def dalpha2_dt(self, t):
        p = self.power
        return (1 - 2 * self.precision) * 2 * (1 - t**p) * (-p * t ** (p - 1))


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule, "polynomial": PolynomialSchedule}


def get_schedule(name: str, **kwargs) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
