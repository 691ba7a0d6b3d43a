"""Schrödinger-bridge refinement by iterative Markovian fitting (DSBM-IMF, Shi et al. 2023) on the
VP reference, starting from a pretrained backward (epsilon) network.

Why IMF and not the original IPF mean matching (De Bortoli et al. 2021): IPF regresses each
network on the increments of trajectories simulated by the other, whose targets carry the full
per-step noise and whose errors compound over iterations. IMF keeps the same alternation (a
forward fit on backward samples, a backward fit on forward samples) but each fit is a regression
on reference-bridge samples pinned at the coupling's end points, which is

* for the backward network, exactly the usual denoising loss ||eps_hat(z_t, t) - (z_t - alpha_t x_0) / sigma_t||^2,
  only with z_t drawn from the bridge between x_0 and the coupled x_T instead of from q(z_t | x_0);
  so iteration 0 *is* the pretrained model (its coupling is the reference's), the refined network
  samples with the unchanged ancestral sampler, and its score is what guidance and likelihoods use;
* for the forward network, the same regression towards x_T, through the parameterisation
  xT_hat = alpha_{T|t} z_t + sigma_{T|t} r(z_t, t) (``reference.reference_endpoint``).

One iteration = fit the forward network on couplings (x_0 sampled by the backward network from
N(0, I) at the horizon T, that x_T), then the backward network on couplings (x_0 from the data,
x_T from the forward network). Fixed point: the Schrödinger bridge between the data and N(0, I)
over [0, T], which starts exactly at the prior even when T is too short for the reference to get
there.
"""

from __future__ import annotations

import torch

from moldiff.bridge.reference import bridge_sample, forward_step, reference_endpoint
from moldiff.geometry import atom_counts, remove_mean, segment_sum
from moldiff.sampling.base import molecule_times, sizes_to_batch, time_grid
from moldiff.sampling.samplers import sample
from moldiff.state import MolState


def _per_molecule_mse(pred: dict, target: dict, batch, n):
    """Mean over molecules of the squared error per dimension (positions: (N - 1) * 3 dimensions)."""
    ex, eh = pred["pos"], pred["atom_type"]
    counts = atom_counts(batch, n).to(ex.dtype)
    dims = (counts - 1) * 3 + counts * eh.shape[1]
    err = segment_sum((ex - target["pos"]).square().sum(1) + (eh - target["atom_type"]).square().sum(1), batch, n)
    return (err / dims).mean()


def _centred(pred: dict, state: MolState) -> dict:
    """The prediction with its positions projected to zero CoM."""
    return {**pred, "pos": remove_mean(pred["pos"], state.batch, state.n_mol)}


def backward_loss(eps_fn, sde, clean: MolState, end: MolState, t_min: float, T: float, generator=None):
    """Denoising loss on reference-bridge samples between the coupled states (clean at 0, end at T)."""
    n, like = clean.n_mol, clean.pos
    t = t_min + (T - t_min) * torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
    z = bridge_sample(sde, clean, end, t, molecule_times(T, n, like), generator)
    target = sde.eps_from_x0(z, _centred(clean.take(sde.names), clean), t)
    return _per_molecule_mse(_centred(eps_fn(z, t), z), target, clean.batch, n)


def forward_loss(residual_fn, sde, clean: MolState, end: MolState, T: float, generator=None):
    """Regression of the forward network's residual r on (x_T - alpha_{T|t} z_t) / sigma_{T|t}."""
    n, like = clean.n_mol, clean.pos
    t = T * (1 - 1e-3) * torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
    TT = molecule_times(T, n, like)
    z = bridge_sample(sde, clean, end, t, TT, generator)
    a, v = sde.transition(t, TT, clean.batch)
    s = v.clamp_min(1e-12).sqrt()
    r = residual_fn(z, t)
    target = {k: (getattr(end, k) - a * getattr(z, k)) / s for k in sde.names}
    return _per_molecule_mse(_centred(r, z), target, clean.batch, n)


def endpoint_fn(residual_fn, sde, T: float):
    """The forward network as a predictor of the end state x_T (for ``reference.forward_step``)."""

    def fn(state: MolState, t):
        r = residual_fn(state, t)
        return reference_endpoint(sde, state, t, molecule_times(T, state.n_mol, state.pos), _centred(r, state))

    return fn


def forward_grid(steps: int, t_min: float, T: float) -> torch.Tensor:
    """0, then the backward sampler's grid reversed: t_min, ..., T (steps + 1 network calls)."""
    return torch.cat([torch.zeros(1, dtype=torch.float64), time_grid(steps, t_min, T).flip(0)])


@torch.no_grad()
def simulate_forward(residual_fn, sde, clean: MolState, steps: int, t_min: float, T: float, generator=None) -> MolState:
    """The end state x_T of the forward process started at the data ``clean``."""
    state = clean.replace(pos=remove_mean(clean.pos, clean.batch, clean.n_mol))
    fn = endpoint_fn(residual_fn, sde, T)
    grid = forward_grid(steps, t_min, T)
    n, like = state.n_mol, state.pos
    for t, u in zip(grid[:-1], grid[1:]):
        state = forward_step(fn, sde, state, molecule_times(t, n, like), molecule_times(u, n, like), molecule_times(T, n, like), generator)
    return state


@torch.no_grad()
def simulate_backward(eps_fn, sde, sizes, feat_dim: int, steps: int, t_min: float, T: float, generator=None,
                      dtype=torch.float32) -> tuple[MolState, MolState]:
    """(clean, end): the backward process (ancestral) from the end state ~ N(0, I) at the horizon T."""
    batch, n = sizes_to_batch(sizes)
    end = sde.prior(batch, n, feat_dim, dtype, generator)
    clean = sample("ancestral", eps_fn, sde, sizes, feat_dim, steps=steps, t_min=t_min, t_max=T, generator=generator, dtype=dtype,
                   init=end)
    return clean, end


def closed_form_coupling_covariance(data_var: float, alpha_T: float, sigma2_T: float, prior_var: float = 1.0) -> float:
    """Cov(x_0, x_T) of the Schrödinger bridge between N(0, data_var) and N(0, prior_var) for the
    reference x_T = alpha_T x_0 + sigma_T z, per dimension: the static problem minimises
    -1/2 log(a b - c^2) + E(x_T - alpha_T x_0)^2 / (2 sigma_T^2) over the cross-covariance c, so
    alpha_T c^2 + sigma_T^2 c - alpha_T a b = 0."""
    a, b, m, v = data_var, prior_var, alpha_T, sigma2_T
    return (-v + (v * v + 4 * m * m * a * b) ** 0.5) / (2 * m)
