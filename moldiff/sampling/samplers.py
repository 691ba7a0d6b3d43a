"""The samplers by name, and ``sample``: prior draw, the chosen sampler down its time grid, the
final denoising step. An explicit table (no registration by import side effects).

* ``ancestral.py``: DDPM ancestral sampling.
* ``reverse_sde.py``: reverse-SDE Euler-Maruyama and predictor-corrector (Langevin corrector).
* ``ode.py``: probability-flow ODE with Heun, DPM-Solver-2 or an adaptive torchdiffeq solver.
* ``karras.py``: Karras et al.'s stochastic sampler (churn + Heun on a rho-spaced grid).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from moldiff.geometry import remove_mean
from moldiff.noise.vp_sde import VPSDE
from moldiff.sampling.ancestral import ancestral_step
from moldiff.sampling.base import EpsFn, denoise, sizes_to_batch, time_grid, walk
from moldiff.sampling.karras import karras
from moldiff.sampling.ode import dpm2_step, heun_step, solve_adaptive
from moldiff.sampling.reverse_sde import euler_maruyama_step, pc_step
from moldiff.state import MolState

SAMPLERS: dict[str, Callable] = {
    "ancestral": partial(walk, ancestral_step),
    "euler_maruyama": partial(walk, euler_maruyama_step),
    "pc": partial(walk, pc_step),
    "ode_heun": partial(walk, heun_step),
    "ode_dpm2": partial(walk, dpm2_step),
    "ode_adaptive": solve_adaptive,
    "karras": karras,
}
DEFAULT_GRID = {"ode_dpm2": "logsnr", "karras": "karras"}
# What a sampler runs with for users (``scripts/sample.py``, ``DiffusionModel.sample``) unless told
# otherwise; ``sample`` and ``generate`` below keep each sampler's exact form, so benchmarks and the
# campaign's learning curve stay comparable. Ancestral: half the injected noise for t <= 0.5. Less
# late noise lowers the sampling temperature where bond lengths settle, and the samples fail by
# bonds a few picometres off; a colder or wider setting shifts the distribution away from the
# data's (figures: docs/history.md, benchmarks/results_late_noise_sweep.json).
RECOMMENDED_OPTIONS = {"ancestral": {"late_noise": 0.5, "late_t": 0.5}}


def with_recommended(name: str, options: dict | None = None) -> dict:
    """The sampler's recommended options, overridden key by key by ``options`` (``late_noise=1``
    gives EDM's exact ancestral posterior)."""
    return {**RECOMMENDED_OPTIONS.get(name, {}), **(options or {})}


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
    init: MolState | None = None,
    callback=None,
    **options,
) -> MolState:
    """Samples of molecules with the given atom counts, as a ``MolState`` (``pos`` (A, 3), the
    continuous features ``atom_type`` (A, F), the layout ``batch`` (A,)).

    ``name`` is a key of ``SAMPLERS``; ``options`` go to its step (e.g. ``snr``, ``corrector_steps``
    for ``pc``; ``rtol``/``atol`` for ``ode_adaptive``). ``eps_fn(state, t) -> {field: eps}``.
    ``init`` (a state of these sizes) replaces the prior draw (the ODE encodes data this way and
    back). ``grid``: ``uniform`` or ``logsnr`` time steps; by default log-SNR for DPM-Solver-2,
    Karras's rho-spaced grid for ``karras``, uniform for the rest. ``t_max``: where sampling
    starts from N(0, I) (below 1 for a model refined as a bridge over a shorter horizon).
    ``callback(i, t, s, state, prediction)``: the per-step hook (``base.after_step``), for every sampler.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    batch, n = sizes_to_batch(sizes)
    if init is None:
        state = sde.prior(batch, n, feat_dim, dtype, generator)
    else:
        state = MolState(batch, n, **{k: getattr(init, k).to(dtype) for k in sde.names})
        state = state.replace(pos=remove_mean(state.pos, batch, n))
    times = time_grid(steps, t_min, t_max, kind=grid or DEFAULT_GRID.get(name, "uniform"), schedule=sde.schedule)
    state = SAMPLERS[name](eps_fn, sde, state, times, generator, callback=callback, **options)
    return denoise(eps_fn, sde, state, times[-1])
