"""Schrödinger-bridge refinement (IMF on the VP reference) against Gaussian point clouds, whose
bridge is known in closed form, plus the invariants (zero CoM, equivariance) of its pieces."""

import math

import pytest
import torch
from torch import nn

from equivariance import assert_equivariant
from moldiff.analytic import GaussianPointClouds
from moldiff.bridge.imf import (backward_loss, closed_form_coupling_covariance, forward_loss, simulate_backward, simulate_forward)
from moldiff.bridge.reference import bridge_sample, forward_step, pinned_gaussian
from moldiff.geometry import atom_counts, max_com, remove_mean
from moldiff.noise.schedules import LinearSchedule
from moldiff.noise.vp_sde import VPSDE
from moldiff.nn.denoiser import state_denoiser
from moldiff.sampling.base import sizes_to_batch
from moldiff.state import MolState

SDE = VPSDE(LinearSchedule())
T = 0.35  # alpha_T^2 = 0.29: the reference is far from N(0, I) at the horizon
DATA = GaussianPointClouds(SDE, axis_std=(0.5, 1.0, 2.0), feat_std=(0.3, 1.5))


class AxisLinear(nn.Module):
    """out = c(t) * z per spatial axis and feature: the exact family for Gaussian point clouds
    (every optimal regression here is linear in z_t, axis by axis)."""

    def __init__(self, dims: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, dims))

    def forward(self, x, h, t, batch, n):
        c = self.mlp(t[:, None].to(x.dtype))[batch]
        return c[:, :3] * x, c[:, 3:] * h


def _moments(clean, end, n):
    """Per axis / feature: variance of x_0 and Cov(x_0, x_T), per dimension of the zero-CoM subspace."""
    x0, h0, xT, hT, batch = clean.pos, clean.atom_type, end.pos, end.atom_type, clean.batch
    dof = float((atom_counts(batch, n) - 1).sum())
    return (x0**2).sum(0) / dof, (x0 * xT).sum(0) / dof, (h0**2).mean(0), (h0 * hT).mean(0)


def _fit(net, loss_fn, steps=500, lr=1e-2, seed=0):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(g).backward()
        opt.step()
        decay.step()


def test_pinned_gaussian_is_the_ddpm_posterior_and_pins_its_ends():
    batch, n = sizes_to_batch([4, 5])
    t, s = torch.full((2,), 0.6, dtype=torch.float64), torch.full((2,), 0.3, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    w0, wt, var = pinned_gaussian(SDE, zero, s, t, batch)
    a_ts = SDE.alpha(t, batch) / SDE.alpha(s, batch)
    s2 = SDE.sigma(t, batch) ** 2 - a_ts**2 * SDE.sigma(s, batch) ** 2
    # DDPM: mean = a_s s2 / sigma_t^2 x0 + a_ts sigma_s^2 / sigma_t^2 z_t, variance s2 sigma_s^2 / sigma_t^2
    assert torch.allclose(w0, SDE.alpha(s, batch) * s2 / SDE.sigma(t, batch) ** 2)
    assert torch.allclose(wt, a_ts * SDE.sigma(s, batch) ** 2 / SDE.sigma(t, batch) ** 2)
    assert torch.allclose(var, s2 * SDE.sigma(s, batch) ** 2 / SDE.sigma(t, batch) ** 2)
    w_s, w_r, v = pinned_gaussian(SDE, s, t, t, batch)  # at the right end: z_r, no spread
    assert torch.allclose(w_s, torch.zeros_like(w_s)) and torch.allclose(w_r, torch.ones_like(w_r)) and float(v.abs().max()) < 1e-12


def test_bridge_samples_have_the_reference_bridge_moments_and_zero_com():
    sizes = [5] * 4000
    batch, n = sizes_to_batch(sizes)
    g = torch.Generator().manual_seed(0)
    clean = DATA.sample(batch, n, g)
    x0, h0 = clean.pos, clean.atom_type
    t, TT = torch.full((n,), 0.2, dtype=torch.float64), torch.full((n,), T, dtype=torch.float64)
    eps_x, eps_h = SDE.noise(clean, g).values()
    xT, hT = SDE.alpha(TT, batch) * x0 + SDE.sigma(TT, batch) * eps_x, SDE.alpha(TT, batch) * h0 + SDE.sigma(TT, batch) * eps_h
    z = bridge_sample(SDE, clean, MolState(batch, n, pos=xT, atom_type=hT), t, TT, g)
    zx, zh = z.pos, z.atom_type
    assert max_com(zx, batch, n) < 1e-12
    # marginalised over the pinned ends the bridge is the reference marginal at t: variance alpha_t^2 d^2 + sigma_t^2
    vx, vh = DATA.variances(t, batch, torch.float64)
    dof = float((atom_counts(batch, n) - 1).sum())
    assert torch.allclose((zx**2).sum(0) / dof, vx[0], rtol=0.05)
    assert torch.allclose((zh**2).mean(0), vh[0], rtol=0.05)


def test_forward_step_is_equivariant_and_keeps_com_zero():
    from moldiff.nn.egnn import EGNN

    torch.manual_seed(0)
    net = EGNN(2, hidden=16, layers=2, dtype=torch.float64)
    batch, n = sizes_to_batch([3, 5])
    x = remove_mean(torch.randn(8, 3, dtype=torch.float64), batch, n)
    h = torch.randn(8, 2, dtype=torch.float64)
    t, u, TT = (torch.full((n,), v, dtype=torch.float64) for v in (0.1, 0.2, T))
    from moldiff.bridge.imf import endpoint_fn

    fn = endpoint_fn(state_denoiser(net), SDE, T)
    noise = SDE.noise(MolState(batch, n, pos=x, atom_type=h), torch.Generator().manual_seed(1))["pos"]  # the step's own draw (same seed)
    std = (SDE.sigma(u, batch) ** 2 - (SDE.alpha(u, batch) / SDE.alpha(t, batch) * SDE.sigma(t, batch)) ** 2).sqrt()

    def deterministic_part(xi, hi, bi):  # the noise draw is the same in every run: it does not rotate
        out = forward_step(fn, SDE, MolState(bi, n, pos=xi, atom_type=hi), t, u, TT, torch.Generator().manual_seed(1))
        return out.pos - std * noise, out.atom_type

    # zero-CoM positions in and out: no translation; tolerances as torch.allclose(atol=1e-10)'s
    assert_equivariant(deterministic_part, x, h, batch, n, atol=1e-10, rtol=1e-5, shift=None)
    a = forward_step(fn, SDE, MolState(batch, n, pos=x, atom_type=h), t, u, TT, torch.Generator().manual_seed(1))
    assert max_com(a.pos, batch, n) < 1e-12


def test_closed_form_coupling_limits():
    # no noise in the reference: the coupling is deterministic, c = sqrt(a b)
    assert math.isclose(closed_form_coupling_covariance(4.0, 1.0, 1e-12), 2.0, rel_tol=1e-5)
    # a reference that forgets everything: independent ends
    assert abs(closed_form_coupling_covariance(4.0, 1e-9, 1.0)) < 1e-6


@pytest.fixture(scope="module")
def refined():
    """Three IMF iterations from the exact (un-refined) model, with axis-linear networks; 100
    sampling steps (at 40, the ancestral sampler's own discretisation error already costs 15% of
    the smallest variance, for the base model from the right prior too)."""
    torch.manual_seed(0)
    steps, t_min = 100, 1e-3
    sizes = [5] * 1024
    batch, n = sizes_to_batch(sizes)
    fwd, bwd = AxisLinear(5).double(), AxisLinear(5).double()
    fwd_fn, bwd_fn = state_denoiser(fwd), state_denoiser(bwd)
    backward_eps = DATA.eps  # iteration 0: the pretrained reverse process
    for it in range(3):
        g = torch.Generator().manual_seed(100 + it)
        clean, end = simulate_backward(backward_eps, SDE, sizes, 2, steps, t_min, T, g, torch.float64)
        _fit(fwd, lambda gen: forward_loss(fwd_fn, SDE, clean, end, T, gen), seed=it)
        data0 = DATA.sample(batch, n, g)
        data_end = simulate_forward(fwd_fn, SDE, data0, steps, t_min, T, g)
        _fit(bwd, lambda gen: backward_loss(bwd_fn, SDE, data0, data_end, t_min, T, gen), seed=10 + it)
        backward_eps = bwd_fn
    return backward_eps, steps, t_min


def test_refinement_reaches_the_data_from_the_prior_where_the_base_does_not(refined):
    bwd, steps, t_min = refined
    sizes = [5] * 4000
    g = torch.Generator().manual_seed(7)
    base = _moments(*simulate_backward(DATA.eps, SDE, sizes, 2, steps, t_min, T, g, torch.float64), len(sizes))
    g = torch.Generator().manual_seed(7)
    clean, end = simulate_backward(bwd, SDE, sizes, 2, steps, t_min, T, g, torch.float64)
    ref = _moments(clean, end, len(sizes))
    x0, batch = clean.pos, clean.batch
    want_x, want_h = DATA.axis_std**2, DATA.feat_std**2
    base_err = max(float(((base[0] - want_x) / want_x).abs().max()), float(((base[2] - want_h) / want_h).abs().max()))
    ref_err = max(float(((ref[0] - want_x) / want_x).abs().max()), float(((ref[2] - want_h) / want_h).abs().max()))
    assert base_err > 0.25, base_err  # the un-refined model starts from the wrong distribution (measured 0.29)
    assert ref_err < 0.1, ref_err  # (measured 0.08, on the smallest variance, 0.09; 0.02-0.04 on the others)
    assert max_com(x0, batch, len(sizes)) < 1e-10
    # against the closed-form Schrödinger bridge: the coupling's cross-covariance, axis by axis
    aT2 = float(SDE.schedule.alpha2(torch.tensor(T, dtype=torch.float64)))
    for got, var in [*zip(ref[1].tolist(), want_x.tolist()), *zip(ref[3].tolist(), want_h.tolist())]:
        want = closed_form_coupling_covariance(var, math.sqrt(aT2), 1 - aT2)
        assert abs(got - want) < 0.05 * math.sqrt(var), (got, want, var)  # the base misses axis 3 by 0.28 = 0.14 sqrt(var)


# --- the refinement job (Lightning + Hydra) on a tiny QM9 model ------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tiny_diffusion):
    return tiny_diffusion


def _refine_cfg(base, out, *overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    root = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        return compose("refine_bridge", [f"ckpt={base}", "steps=4", "horizon=0.7", "phase_steps=3", "coupling=8", "batch_size=4",
                                         "sim_batch_size=4", "data_max=32", "logs=[]", "trainer.enable_progress_bar=false",
                                         f"checkpoint.dir={out}", f"export={out}/refined.ckpt", *overrides])


def test_refinement_resumes_exactly_and_exports_a_sampling_checkpoint(tiny_base, tmp_path):
    from moldiff.jobs.refine_bridge import run_refinement
    from moldiff.sampling.generate import generate
    from moldiff.model.diffusion import DiffusionModel

    whole, path = run_refinement(_refine_cfg(tiny_base, tmp_path / "a", "iterations=2"), tmp_path / "a")
    run_refinement(_refine_cfg(tiny_base, tmp_path / "b", "iterations=1"), tmp_path / "b")  # stops half-way
    resumed, _ = run_refinement(_refine_cfg(tiny_base, tmp_path / "b", "iterations=2"), tmp_path / "b")  # continues from step 6
    assert whole.global_step == resumed.global_step == 12
    sessions = torch.load(tmp_path / "b" / "refined.ckpt", weights_only=True)["moldiff_record"][-1]["sessions"]
    assert [s["first_step"] for s in sessions] == [0, 6]  # the second run did continue, not start over
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    base = DiffusionModel.load(tiny_base, "cpu")
    refined = DiffusionModel.load(path, "cpu")
    assert refined.horizon == 0.7 and base.horizon == 1.0
    changed = [k for k, v in refined.net.state_dict().items() if not torch.equal(v, base.ema.module.state_dict()[k])]
    assert changed  # the backward network was trained
    mols = generate(refined, 6, steps=5, batch_size=3, progress=False)
    assert len(mols) == 6 and all(abs(mols[i][1].mean(0)).max() < 1e-4 for i in range(6))
    # the likelihood job takes it (prior at the horizon) like any diffusion checkpoint
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.jobs.likelihood import run_likelihood

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        lk = compose("likelihood", [f"ckpt={path}", "n=4", "batch_size=2", "elbo.T=10", f"output={tmp_path / 'lk'}"])
    assert math.isfinite(run_likelihood(lk, tmp_path)["nats_per_molecule"])


def test_elbo_over_a_shorter_horizon_is_still_a_bound():
    """With the exact score the ELBO over [0, T] stays above the exact NLL; its prior term grows
    as the reference at T moves away from N(0, I)."""
    from moldiff.likelihood.elbo import elbo
    from moldiff.noise.schedules import PolynomialSchedule

    sde = VPSDE(PolynomialSchedule())
    data = GaussianPointClouds(sde, axis_std=(0.5, 1.0, 2.0), feat_std=(0.3, 1.5))
    batch, n = sizes_to_batch([5] * 200)
    clean = data.sample(batch, n, torch.Generator().manual_seed(0))
    exact = -data.log_prob(clean)
    full = elbo(data.eps, sde, clean, T=200, generator=torch.Generator().manual_seed(1))
    short = elbo(data.eps, sde, clean, T=200, generator=torch.Generator().manual_seed(1), horizon=0.6)
    assert float((short["nll"] - exact).mean()) > 0 and float((full["nll"] - exact).mean()) > 0
    assert float(short["prior"].mean()) > float(full["prior"].mean()) + 1


def test_bad_refinement_options_fail_up_front(tiny_base, tmp_path):
    from moldiff.jobs.refine_bridge import run_refinement

    for override, message in [("horizon=1.5", "horizon"), ("steps=0", "steps"), ("ckpt=/nope.ckpt", "no checkpoint")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run_refinement(_refine_cfg(tiny_base, tmp_path, override), tmp_path)


def test_bridge_uses_the_model_layers_ema_and_state_dict_layout(tiny_base):
    """The backward process is a DiffusionModel (net + EMA from the model layer); the refined model is
    one too, its network holding the EMA weights; a run saved under the old names still resumes."""
    from moldiff.bridge.module import BridgeModule
    from moldiff.jobs.refine_bridge import base_weights
    from moldiff.model.checkpoint import read_checkpoint
    from moldiff.model.diffusion import DiffusionModel

    base = read_checkpoint(tiny_base)
    module = BridgeModule(base=dict(base["hyper_parameters"]), horizon=0.7, ema_decay=0.9)
    module.start_from(base_weights(base))
    shipped_layout = DiffusionModel.from_checkpoint(base)
    assert isinstance(module.backward_model, DiffusionModel) and module.forward_ema is not None
    module.backward_model.update_ema()  # the first update copies the network
    for p in module.backward_net.parameters():  # a step of training, then an EMA update
        p.data.add_(0.01)
    module.backward_model.update_ema()
    refined = module.refined_model()
    assert refined.horizon == 0.7 and refined.state_dict().keys() == shipped_layout.state_dict().keys()
    ema = module.backward_model.ema.module.state_dict()
    for k, v in refined.net.state_dict().items():
        assert torch.equal(v, ema[k]) and torch.equal(refined.ema.module.state_dict()[k], ema[k]), k
    assert not all(torch.equal(v, module.backward_net.state_dict()[k]) for k, v in ema.items())  # EMA, not the raw weights

    # a checkpoint of the old layout (backward_net.*, backward_ema.*) is read into the new one
    state = module.state_dict()
    old = {k.replace("backward_model.net.", "backward_net.").replace("backward_model.ema.", "backward_ema."): v.clone()
           for k, v in state.items()}
    checkpoint = {"state_dict": old}
    fresh = BridgeModule(base=dict(base["hyper_parameters"]), horizon=0.7, ema_decay=0.9)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_backward_fit_reads_the_base_network_through_its_own_prediction(tiny_base):
    """A base that predicts x0 (or v) is fitted and simulated as the epsilon network it is, the
    conversion its sampler uses, not its raw output read as epsilon."""
    from moldiff.bridge.module import BridgeModule
    from moldiff.jobs.refine_bridge import base_weights
    from moldiff.model.checkpoint import read_checkpoint

    base = read_checkpoint(tiny_base)
    hp = dict(base["hyper_parameters"])
    hp["noise"] = {**hp["noise"], "prediction": "x0"}
    module = BridgeModule(base=hp, horizon=0.7)
    module.start_from(base_weights(base))
    batch = torch.tensor([0, 0, 0, 1, 1])
    state = MolState(batch, 2, pos=remove_mean(torch.randn(5, 3), batch, 2), atom_type=torch.randn(5, module.layout.dim))
    t = torch.tensor([0.3, 0.6])
    for ema in (False, True):
        raw = state_denoiser(module.backward_model.network(ema))(state, t)
        x0 = module.sde.x0_from_eps(state, module.backward_eps(ema)(state, t), t)
        assert torch.allclose(x0.pos, remove_mean(raw["pos"], batch, 2), atol=1e-5)  # the output is read as x0
        assert not torch.allclose(module.backward_eps(ema)(state, t)["pos"], raw["pos"])
