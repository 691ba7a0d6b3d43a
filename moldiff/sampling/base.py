"""What every sampler shares: batches from atom counts, the time grid, the final denoising step,
and the loop that walks a step function down the grid. The samplers themselves and the
``sample`` driver are in ``samplers.py``.

Samplers step a ``MolState`` (the Gaussian model's: ``pos`` and the continuous ``atom_type``
features) with a denoiser ``eps_fn(state, t) -> {field: eps}``; a step is
``step(eps_fn, sde, state, t, s, generator, **options) -> state``."""

from __future__ import annotations

from typing import Callable

import torch

from moldiff.geometry import remove_mean
from moldiff.noise.vp_sde import VPSDE
from moldiff.state import MolState

EpsFn = Callable[[MolState, torch.Tensor], dict]  # (state, per-molecule times (M,)) -> {field: eps}


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


def molecule_times(t: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    """The same time t for each of n molecules: (n,), as networks and the SDE take it."""
    return torch.full((n,), float(t), dtype=like.dtype, device=like.device)


def denoise(eps_fn: EpsFn, sde: VPSDE, state: MolState, t) -> MolState:
    """z_0 estimate (z_t - sigma_t eps) / alpha_t: the last step of every sampler."""
    tt = molecule_times(t, state.n_mol, state.pos)
    x0 = sde.x0_from_eps(state, eps_fn(state, tt), tt)
    return x0.replace(pos=remove_mean(x0.pos, state.batch, state.n_mol))


def after_step(callback, i: int, t: float, s: float, state: MolState) -> MolState:
    """The per-step hook every sampler calls after step i (t -> s), as k-diffusion's samplers do:
    ``callback(i, t, s, state, prediction)`` sees the state (positions, and the Gaussian model's
    continuous features as ``atom_type``; prediction None) and may return a state to continue from
    (inpainting puts fixed atoms back this way), or None to leave it."""
    if callback is None:
        return state
    out = callback(i, t, s, state, None)
    return state if out is None else out


def walk(step, eps_fn, sde, state: MolState, grid, generator, callback=None, **options) -> MolState:
    """Apply ``step(eps_fn, sde, state, t, s, generator)`` along consecutive grid times."""
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        state = step(eps_fn, sde, state, float(t), float(s), generator, **options)
        state = after_step(callback, i, float(t), float(s), state)
    return state
