"""What every sampler shares: batches from atom counts, the time grid, the final denoising step,
and the driver that walks a step function down the grid."""

from __future__ import annotations

from typing import Callable

import torch

from moldiff.geometry import remove_mean
from moldiff.noise.vp_sde import VPSDE

EpsFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def sizes_to_batch(sizes) -> tuple[torch.Tensor, int]:
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes), len(sizes)


def sample_sizes(histogram: dict[int, int] | torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """Atom counts drawn from a dataset's histogram ({size: count} or counts indexed by size)."""
    if isinstance(histogram, dict):
        counts = torch.zeros(max(histogram) + 1, dtype=torch.float64)
        for k, v in histogram.items():
            counts[int(k)] = float(v)
    else:
        counts = torch.as_tensor(histogram, dtype=torch.float64)
    return torch.multinomial(counts, n, replacement=True, generator=generator)


def time_grid(steps: int, t_min: float = 1e-3, t_max: float = 1.0, kind: str = "uniform", schedule=None) -> torch.Tensor:
    """steps + 1 times from t_max down to t_min, uniform in t or in log-SNR (few-step ODE
    solvers spend their steps evenly in log-SNR, where the solution changes evenly)."""
    if kind == "uniform":
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if kind == "logsnr":
        ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        grid = schedule.t_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64))
        grid[0], grid[-1] = t_max, t_min  # exact ends despite bisection
        return grid
    if kind == "karras":  # Karras et al.'s grid: uniform in s^(1/rho), s = sigma / alpha, rho = 7
        rho = 7.0
        ends = torch.tensor([t_max, t_min], dtype=torch.float64)
        s_max, s_min = (schedule.sigma(ends) / schedule.alpha(ends)).tolist()
        ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        grid = schedule.t_of_log_snr(-2 * torch.log(s))
        grid[0], grid[-1] = t_max, t_min
        return grid
    raise ValueError(f"unknown time grid {kind!r}; use uniform, logsnr or karras")


def per_molecule(t: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), float(t), dtype=like.dtype, device=like.device)


def denoise(eps_fn: EpsFn, sde: VPSDE, x, h, t, batch, n):
    """z_0 estimate (z_t - sigma_t eps) / alpha_t: the last step of every sampler."""
    tt = per_molecule(t, n, x)
    ex, eh = eps_fn(x, h, tt, batch, n)
    a, s = sde.alpha(tt, batch), sde.sigma(tt, batch)
    return remove_mean((x - s * ex) / a, batch, n), (h - s * eh) / a


def sample(
    name: str,
    eps_fn: EpsFn,
    sde: VPSDE,
    sizes,
    feat_dim: int,
    steps: int = 100,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    grid: str | None = None,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    x_init=None,
    h_init=None,
    **options,
):
    """Samples of molecules with the given atom counts: (x (A, 3), h (A, F), batch (A,)).

    ``name`` is a key of ``SAMPLERS``; ``options`` go to its step (e.g. ``snr``, ``corrector_steps``
    for ``pc``; ``rtol``/``atol`` for ``ode_adaptive``). ``x_init``/``h_init`` replace the prior
    draw (the ODE encodes data this way and back). ``grid``: ``uniform`` or ``logsnr`` time
    steps; by default log-SNR for DPM-Solver-2, Karras's rho-spaced grid for ``karras``, uniform for the rest. ``t_max``: where sampling
    starts from N(0, I) (below 1 for a model refined as a bridge over a shorter horizon).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    batch, n = sizes_to_batch(sizes)
    if x_init is None:
        x, h = sde.prior(batch, n, feat_dim, dtype, generator)
    else:
        x, h = remove_mean(x_init.to(dtype), batch, n), h_init.to(dtype)
    times = time_grid(steps, t_min, t_max, kind=grid or DEFAULT_GRID.get(name, "uniform"), schedule=sde.schedule)
    x, h = SAMPLERS[name](eps_fn, sde, x, h, times, batch, n, generator, **options)
    x, h = denoise(eps_fn, sde, x, h, times[-1], batch, n)
    return x, h, batch


def walk(step, eps_fn, sde, x, h, grid, batch, n, generator, **options):
    """Apply ``step(eps_fn, sde, x, h, t, s, batch, n, generator)`` along consecutive grid times."""
    for t, s in zip(grid[:-1], grid[1:]):
        x, h = step(eps_fn, sde, x, h, float(t), float(s), batch, n, generator, **options)
    return x, h


SAMPLERS: dict[str, Callable] = {}
DEFAULT_GRID = {"ode_dpm2": "logsnr", "karras": "karras"}


def register(name: str):
    def deco(fn):
        SAMPLERS[name] = fn
        return fn

    return deco


# Importing the sampler modules fills SAMPLERS.
from moldiff.sampling import ancestral, karras, ode, reverse_sde  # noqa: E402,F401
