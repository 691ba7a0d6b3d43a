"""Every sampler, driven by the exact score of Gaussian point clouds, reproduces the data's
mean and covariance; centre of mass stays at zero; the probability-flow ODE inverts."""

import pytest
import torch

from moldiff.analytic import GaussianPointClouds
from moldiff.geometry import max_com
from moldiff.noise import VPSDE, get_schedule
from moldiff.sampling import sample, sizes_to_batch
from moldiff.sampling.ode import solve_adaptive

N_ATOMS, N_MOL = 5, 4000

# Step counts where each sampler's discretisation bias is below the test's sampling error.
CASES = [
    ("ancestral", 2000, {}),  # first-order bias: it omits Var(x0 | z_t) in each step
    ("euler_maruyama", 1000, {}),
    ("pc", 200, {"snr": 0.01, "corrector_steps": 1}),
    ("ode_heun", 50, {}),
    ("ode_dpm2", 50, {}),
    ("ode_adaptive", 1, {"rtol": 1e-6, "atol": 1e-6}),
    ("karras", 50, {}),  # churn 0: Heun on the rho-spaced grid
    ("karras", 100, {"churn": 30, "s_tmin": 0.05, "s_tmax": 50.0}),
]


@pytest.mark.parametrize("schedule", ["linear", "polynomial"])
@pytest.mark.parametrize("name,steps,opts", CASES)
def test_sampler_matches_gaussian_data(schedule, name, steps, opts):
    if name == "ancestral" and schedule == "linear":
        pytest.skip("2,000 ancestral steps are needed on the linear schedule; covered on EDM's polynomial one")
    sde = VPSDE(get_schedule(schedule))
    data = GaussianPointClouds(sde)
    g = torch.Generator().manual_seed(1)
    out = sample(name, data.eps, sde, [N_ATOMS] * N_MOL, data.feat_dim, steps, generator=g, dtype=torch.float64, **opts)
    x, h, batch = out.pos, out.atom_type, out.batch
    n = N_MOL
    assert max_com(x, batch, n) < 1e-6
    # Per axis, centred coordinates have variance d_a^2 (N - 1) / N; features feat_std^2.
    target_x = data.axis_std**2 * (N_ATOMS - 1) / N_ATOMS
    var_x, var_h = (x**2).mean(0), (h**2).mean(0)
    n_eff = N_MOL * (N_ATOMS - 1)
    tol_x = 4 * (2 / n_eff) ** 0.5  # 4 standard errors of a variance estimate, relative
    tol_h = 4 * (2 / (N_MOL * N_ATOMS)) ** 0.5
    assert torch.allclose(var_x, target_x, rtol=tol_x), (var_x, target_x)
    assert torch.allclose(var_h, data.feat_std**2, rtol=tol_h), (var_h, data.feat_std**2)
    # Means: zero within 4 standard errors.
    assert ((h.mean(0)).abs() < 4 * data.feat_std / (N_MOL * N_ATOMS) ** 0.5).all()
    # Cross-covariance between axes is zero.
    cov_xy = (x[:, 0] * x[:, 2]).mean()
    assert abs(float(cov_xy)) < 4 * float(data.axis_std[0] * data.axis_std[2]) / n_eff**0.5


@pytest.mark.parametrize("name", ["ode_heun", "ode_dpm2"])
def test_few_step_solvers_are_second_order(name):
    """Same prior draw: the distance to the exact ODE solution falls ~4x when steps double."""
    sde = VPSDE(get_schedule("polynomial"))
    data = GaussianPointClouds(sde)
    run = lambda sampler, steps, **o: sample(  # noqa: E731
        sampler, data.eps, sde, [N_ATOMS] * 200, 2, steps, generator=torch.Generator().manual_seed(4), dtype=torch.float64, **o
    ).pos
    exact = run("ode_adaptive", 1, rtol=1e-9, atol=1e-9)
    errs = [float((run(name, k, grid="logsnr") - exact).abs().max()) for k in (10, 20, 40)]
    assert errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3, errs


def test_untrained_eps_is_detected():
    """The covariance check can fail: a wrong score (data std off by 20 %) is caught."""
    sde = VPSDE(get_schedule("linear"))
    wrong = GaussianPointClouds(sde, axis_std=(0.6, 1.2, 2.4))
    true = GaussianPointClouds(sde)
    g = torch.Generator().manual_seed(1)
    x = sample("ode_dpm2", wrong.eps, sde, [N_ATOMS] * N_MOL, 2, 20, generator=g, dtype=torch.float64).pos
    target = true.axis_std**2 * (N_ATOMS - 1) / N_ATOMS
    assert not torch.allclose((x**2).mean(0), target, rtol=0.05)


def test_probability_flow_ode_round_trip():
    sde = VPSDE(get_schedule("polynomial"))
    data = GaussianPointClouds(sde)
    g = torch.Generator().manual_seed(2)
    batch, n = sizes_to_batch([3, 5, 8, 12])
    start = data.sample(batch, n, g)
    x0, h0 = start.pos, start.atom_type
    fwd = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    end = solve_adaptive(data.eps, sde, start, fwd, rtol=1e-8, atol=1e-8)
    x1 = end.pos
    assert max_com(x1, batch, n) < 1e-6
    back = solve_adaptive(data.eps, sde, end, fwd.flip(0), rtol=1e-8, atol=1e-8)
    xb, hb = back.pos, back.atom_type
    err = max(float((xb - x0).abs().max()), float((hb - h0).abs().max()))
    assert err <= 1e-3
    assert float((x1 - x0).abs().max()) > 0.1  # it did move


def test_unknown_sampler_is_a_clear_error():
    sde = VPSDE(get_schedule("linear"))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("heun", GaussianPointClouds(sde).eps, sde, [3], 2, 5)


def test_ancestral_late_noise_is_an_exact_no_op_at_one_and_shrinks_spread_below_one():
    sde = VPSDE(get_schedule("polynomial"))
    data = GaussianPointClouds(sde)
    run = lambda **o: sample("ancestral", data.eps, sde, [N_ATOMS] * 500, 2, 100, generator=torch.Generator().manual_seed(2),  # noqa: E731
                             dtype=torch.float64, **o).pos
    assert torch.equal(run(), run(late_noise=1.0, late_t=0.5))
    assert float(run(late_noise=0.0, late_t=0.5).var()) < 0.97 * float(run().var())


SEVEN = ["ancestral", "euler_maruyama", "pc", "ode_heun", "ode_dpm2", "ode_adaptive", "karras"]


@pytest.mark.parametrize("name", SEVEN)
def test_every_sampler_calls_back_after_each_step_and_takes_its_state(name):
    """The per-step hook: called once per step in order with the state as a MolState; returning
    None changes nothing (bit for bit, but for the adaptive ODE, which then restarts at each grid
    time), and a returned state is what the sampler continues from."""
    sde = VPSDE(get_schedule("polynomial"))
    data = GaussianPointClouds(sde)
    opts = {"rtol": 1e-7, "atol": 1e-7} if name == "ode_adaptive" else {}
    run = lambda **kw: sample(name, data.eps, sde, [N_ATOMS] * 6, data.feat_dim, 5,  # noqa: E731
                              generator=torch.Generator().manual_seed(3), dtype=torch.float64, **opts, **kw)
    seen = []

    def watch(i, t, s, state, prediction):
        seen.append((i, t, s, state.pos.shape, state.atom_type.shape, state.n_mol))

    x0, h0 = run().take(("pos", "atom_type")).values()
    x1, h1 = run(callback=watch).take(("pos", "atom_type")).values()
    assert [e[0] for e in seen] == list(range(5)) and all(e[1] > e[2] for e in seen)
    assert seen[0][3:] == ((6 * N_ATOMS, 3), (6 * N_ATOMS, data.feat_dim), 6)
    close = (lambda a, b: torch.allclose(a, b, atol=1e-5)) if name == "ode_adaptive" else torch.equal
    assert close(x0, x1) and close(h0, h1)

    def pin(i, t, s, state, prediction):  # pin the first atom's features to a value: the output must keep it
        h = state.atom_type.clone()
        h[0] = 0.25
        return state.replace(atom_type=h)

    h2 = run(callback=pin).atom_type
    assert not torch.allclose(h2, h0)
