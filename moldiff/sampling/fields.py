"""Sampling a multi-field ``MolState`` (the bond model): every field steps by its own process, and a
callback sees the state after every step.

``ancestral`` is the one sampler that steps categorical fields: positions take the exact Gaussian
posterior q(z_s | z_t, x0 = x0_hat) of the VP process (``late_noise`` scales its noise for
t <= ``late_t``, as for the Gaussian model), types, charges and bonds a draw from the categorical
posterior marginalised over the network's clean-class probabilities. After the last step the
network's estimate is taken as it is: positions x0_hat, classes their argmax.

A state with fixed atoms (``state.fixed``, a fragment-conditioned network's fragment,
``sampling/fragment_condition.py``) keeps them, and the pairs between two of them, exactly as they
are at every step; that molecule's free atoms step without the zero-CoM projection, in the
fragment's frame as in training (``loss/fields.py``).

``callback(i, t, s, state, prediction) -> state | None`` runs after step i (t -> s); a state it
returns replaces the sampler's (inpainting puts fixed atoms back at their forward-noised values
this way); None keeps it. Other samplers (ODE, Karras, predictor-corrector) need a continuous
state and are refused with that reason.
"""

from __future__ import annotations

from typing import Callable

import torch

from moldiff.geometry import centered_noise, remove_mean
from moldiff.nn.bond_egnn import predict
from moldiff.noise.categorical import CategoricalProcess, draw
from moldiff.noise.vp_sde import VPSDE
from moldiff.sampling.base import sizes_to_batch, time_grid
from moldiff.state import MolState

FIELD_SAMPLERS = ("ancestral",)
DenoiseFn = Callable[[MolState, torch.Tensor], dict]


def prior_state(sizes, processes: dict[str, CategoricalProcess], generator=None, dtype=torch.float32, device="cpu") -> MolState:
    """The state at t = 1: zero-CoM Gaussian positions, categorical fields drawn from their marginals."""
    batch, n = sizes_to_batch(torch.as_tensor(sizes, device=device))
    state = MolState(batch, n, pos=centered_noise(batch, n, generator, dtype))
    return state.replace(**{name: p.prior(len(state.field_batch(name)), device, generator) for name, p in processes.items()})


def ancestral_step(denoise_fn: DenoiseFn, sde: VPSDE, processes, state: MolState, t: float, s: float, generator=None,
                   late_noise: float = 1.0, late_t: float = 0.0, previous: dict | None = None):
    """One step t -> s of every field; returns (new state, the network's prediction at t).
    ``previous``: the prediction of the step before, for a self-conditioned network."""
    n = state.n_mol
    tt = torch.full((n,), t, dtype=state.pos.dtype, device=state.device)
    ss = torch.full((n,), s, dtype=state.pos.dtype, device=state.device)
    pred = predict(denoise_fn, state, tt, previous)
    b = state.batch
    a_ts, s2_ts = sde.transition(ss, tt, b)
    sg_t2, sg_s2 = sde.sigma(tt, b) ** 2, sde.sigma(ss, b) ** 2
    # q(z_s | z_t, x0): mean a_ts sg_s^2 / sg_t^2 z_t + alpha_s s2_ts / sg_t^2 x0, variance s2_ts sg_s^2 / sg_t^2
    raw = torch.randn(state.pos.shape, generator=generator, dtype=state.pos.dtype, device=state.device)
    held = None if state.fixed is None else state.held()[b, None]  # once per step, for both
    x0, noise = _in_frame(state, pred["pos"], held), _in_frame(state, raw, held)
    mean = a_ts * sg_s2 / sg_t2 * state.pos + sde.alpha(ss, b) * s2_ts / sg_t2 * x0
    std = (s2_ts * sg_s2 / sg_t2).sqrt() * (late_noise if t <= late_t else 1.0)
    changes = {"pos": mean + std * noise}
    for name, process in processes.items():
        fb = state.field_batch(name)
        p0 = torch.softmax(pred[name].double(), dim=1)
        probs = process.posterior(getattr(state, name), p0, ss.double()[fb], tt.double()[fb])
        changes[name] = draw(probs, generator)
    return state.replace(**changes).keep_fixed(state), pred


def _in_frame(state: MolState, vectors: torch.Tensor, held: torch.Tensor | None = None) -> torch.Tensor:
    """(A, 3) vectors made zero-mean per molecule, except in molecules held by a fragment
    (``held`` (A, 1): ``state.held()`` per atom, if already computed)."""
    centred = remove_mean(vectors, state.batch, state.n_mol)
    if state.fixed is None:
        return centred
    return torch.where(state.held()[state.batch, None] if held is None else held, vectors, centred)


def final_state(denoise_fn: DenoiseFn, processes, state: MolState, t: float, previous: dict | None = None) -> MolState:
    """The network's clean estimate at the last grid time: positions as predicted, classes by argmax."""
    tt = torch.full((state.n_mol,), t, dtype=state.pos.dtype, device=state.device)
    pred = predict(denoise_fn, state, tt, previous)
    changes = {"pos": _in_frame(state, pred["pos"])}
    changes.update({name: pred[name].argmax(1) for name in processes})
    return state.replace(**changes).keep_fixed(state)


def sample_fields(name: str, denoise_fn: DenoiseFn, sde: VPSDE, processes: dict[str, CategoricalProcess], sizes,
                  steps: int = 100, t_min: float = 1e-3, t_max: float = 1.0, grid: str = "uniform", generator=None,
                  dtype=torch.float32, device="cpu", callback=None, init: MolState | None = None, **options) -> MolState:
    """Molecules with the given atom counts as a ``MolState``; ``steps`` network calls plus one."""
    if name not in FIELD_SAMPLERS:
        raise ValueError(f"sampler {name!r} cannot step categorical fields (bonds, types, charges); "
                         f"the bond model samples with {FIELD_SAMPLERS}")
    state = init if init is not None else prior_state(sizes, processes, generator, dtype, device)
    times = time_grid(steps, t_min, t_max, kind=grid, schedule=sde.schedule).tolist()
    pred = None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        state, pred = ancestral_step(denoise_fn, sde, processes, state, t, s, generator, previous=pred, **options)
        if callback is not None:
            state = callback(i, t, s, state, pred) or state
    return final_state(denoise_fn, processes, state, times[-1], pred)
