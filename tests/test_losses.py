"""Losses: VLB weights against their continuous limit, L0 against closed forms, the simple loss
against the Bayes error of Gaussian data, and a tiny EGNN that overfits 8 real QM9 molecules."""

import math

import numpy as np
import pytest
import torch

from moldiff.analytic import GaussianPointClouds
from moldiff.data.elements import QM9_VOCAB
from moldiff.data.features import FeatureLayout
from moldiff.geometry import remove_mean
from moldiff.loss.objective import DiffusionLoss
from moldiff.loss.reconstruction import feature_log_prob, position_log_prob
from moldiff.loss.weights import continuous_vlb_weight, discrete_vlb_weight
from moldiff.noise.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule
from moldiff.noise.vp_sde import VPSDE
from moldiff.nn.denoiser import state_denoiser
from moldiff.sampling.base import sizes_to_batch
from moldiff.state import MolState

LAYOUT = FeatureLayout(QM9_VOCAB)


def test_feature_layout_round_trip():
    numbers = np.array([1, 6, 7, 8, 9, 6])
    h = LAYOUT.encode_numbers(numbers)
    assert h.shape == (6, 6)
    assert torch.allclose(h[:, :5].sum(1), torch.full((6,), 0.25))  # one-hot / 4
    assert torch.allclose(LAYOUT.charges(h), torch.tensor([1.0, 6, 7, 8, 9, 6]))  # Z / 10 undone
    assert (LAYOUT.decode_numbers(h) == numbers).all()
    with pytest.raises(ValueError, match="not in the qm9 vocabulary"):
        LAYOUT.encode_numbers(np.array([6, 16]))


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule(), PolynomialSchedule()])
def test_discrete_vlb_weights_converge_to_continuous(schedule):
    """sum_i w_i >= 1/2 (lambda(0+) - lambda(1)) = int -1/2 lambda' dt, with equality as T grows."""
    lo = 1e-3  # avoid lambda(0) = inf of the linear schedule
    t = torch.tensor([lo, 1.0], dtype=torch.float64)
    exact = 0.5 * float(schedule.log_snr(t[0]) - schedule.log_snr(t[1]))
    # the integral of the continuous weight, by quadrature, is the same number
    u = torch.linspace(lo, 1.0, 200001, dtype=torch.float64)
    assert abs(float(torch.trapezoid(continuous_vlb_weight(schedule, u), u)) - exact) < 1e-4 * exact
    gaps = []
    for T in (50, 200, 1000, 5000):
        grid = torch.linspace(lo, 1.0, T + 1, dtype=torch.float64)[1:]
        # weights on the grid [lo, 1] (T steps of width (1 - lo) / T)
        s = grid - (1.0 - lo) / T
        w = 0.5 * torch.expm1(schedule.log_snr(s) - schedule.log_snr(grid))
        gaps.append(float(w.sum()) - exact)
    assert all(g >= -1e-9 for g in gaps)
    assert gaps[-1] < 0.02 * exact and all(a > b for a, b in zip(gaps, gaps[1:]))


def test_discrete_vlb_weight_on_unit_grid():
    sched = PolynomialSchedule()
    T = 100
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    w = discrete_vlb_weight(sched, t, T)
    snr = sched.snr
    expected = 0.5 * (snr(t - 1.0 / T) / snr(t) - 1)
    assert torch.allclose(w, expected, rtol=1e-10)


def test_position_log_prob_is_the_gaussian_density_on_com_free_dims():
    g = torch.Generator().manual_seed(0)
    batch, n = sizes_to_batch([3, 5])
    x = remove_mean(torch.randn(8, 3, generator=g, dtype=torch.float64), batch, n)
    x_hat = remove_mean(torch.randn(8, 3, generator=g, dtype=torch.float64), batch, n)
    std = 0.2  # sigma_0 / alpha_0
    # eps-parametrisation: x - x_hat = std (eps_hat - eps)
    eps, eps_hat = torch.zeros_like(x), (x - x_hat) / std
    logp = position_log_prob(eps, eps_hat, torch.full((2,), math.log(std), dtype=torch.float64), batch, n)
    for m, size in enumerate([3, 5]):
        d = (x - x_hat)[batch == m]
        dof = 3 * (size - 1)
        ref = -0.5 * float(d.square().sum()) / std**2 - dof * (math.log(std) + 0.5 * math.log(2 * math.pi))
        assert abs(float(logp[m]) - ref) < 1e-10


def test_feature_log_prob_limits():
    batch, n = sizes_to_batch([4])
    h0 = LAYOUT.encode_numbers(np.array([1, 6, 7, 8])).double()
    tiny = torch.full((4, 1), 1e-3, dtype=torch.float64)
    assert abs(float(feature_log_prob(h0, h0, tiny, LAYOUT, batch, n))) < 1e-6  # exact z_0: probability 1
    # one-hot bins are 1 wide on the unscaled axis: with z_0 = h0 and sigma = s / 4 the true type
    # has mass erf(1/(2s sqrt 2))-like; check the categorical part alone against that closed form
    layout = FeatureLayout(QM9_VOCAB, include_charges=False)
    h0c = h0[:, :5]
    s = torch.full((4, 1), 0.5 / 4, dtype=torch.float64)  # sigma 0.5 in one-hot units
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    p_true = phi(0.5 / 0.5) - phi(-0.5 / 0.5)  # bin around 1 when the value is 1
    p_other = phi(1.5 / 0.5) - phi(0.5 / 0.5)  # bin around 1 when the value is 0
    expected = 4 * math.log(p_true / (p_true + 4 * p_other))
    assert abs(float(feature_log_prob(h0c, h0c, s, layout, batch, n)) - expected) < 1e-6


def test_simple_loss_with_exact_eps_is_the_bayes_error():
    """Gaussian data: E||eps - E[eps|z_t]||^2 per dimension = alpha^2 d^2 / (alpha^2 d^2 + sigma^2)."""
    sde = VPSDE(PolynomialSchedule())
    model = GaussianPointClouds(sde)
    layout = FeatureLayout(QM9_VOCAB)  # only its scales matter to the simple loss: not used here
    loss = DiffusionLoss(sde, layout, "simple", timesteps=None)
    g = torch.Generator().manual_seed(0)
    sizes = [6] * 4000
    batch, n = sizes_to_batch(sizes)
    clean = model.sample(batch, n, g)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    err, _ = loss.squared_error(model.eps, clean, t, g)
    a2 = float(sde.schedule.alpha2(torch.tensor(0.5, dtype=torch.float64)))
    mmse = lambda d: a2 * d**2 / (a2 * d**2 + 1 - a2)
    # positions: (N - 1) dims per axis; features: N per dimension
    expected = sum(5 * mmse(float(d)) for d in model.axis_std) + sum(6 * mmse(float(d)) for d in model.feat_std)
    assert abs(float(err.mean()) - expected) < 4 * float(err.std()) / math.sqrt(n)


def test_vlb_requires_noise_at_t0():
    with pytest.raises(ValueError, match="sigma"):
        DiffusionLoss(VPSDE(LinearSchedule()), LAYOUT, "vlb")
    with pytest.raises(ValueError, match="weighting"):
        DiffusionLoss(VPSDE(LinearSchedule()), LAYOUT, "l1")


@pytest.mark.parametrize("timesteps", [1000, None])
def test_vlb_loss_is_finite_and_positive_with_an_exact_score(timesteps):
    sde = VPSDE(PolynomialSchedule())
    loss = DiffusionLoss(sde, LAYOUT, "vlb", timesteps=timesteps)
    g = torch.Generator().manual_seed(1)
    batch, n = sizes_to_batch([5] * 64)
    x0 = remove_mean(torch.randn(len(batch), 3, generator=g, dtype=torch.float64), batch, n)
    h0 = LAYOUT.encode_indices(torch.randint(0, 5, (len(batch),), generator=g), torch.float64)
    zero = lambda z, t: {"pos": torch.zeros_like(z.pos), "atom_type": torch.zeros_like(z.atom_type)}
    clean = MolState(batch, n, pos=x0, atom_type=h0)
    values, t = loss(zero, clean, g)
    assert values.shape == (64,) and torch.isfinite(values).all()
    # the one-sample estimate includes L0 when t = 0 is drawn: force it
    l0 = loss.reconstruction(zero, clean, torch.zeros(n, dtype=torch.float64), g)
    assert torch.isfinite(l0).all()


def _qm9_batch(k=8, repeat=1):
    from moldiff.data.qm9 import load_qm9

    mols = load_qm9("train").subset(np.arange(k))
    batch = torch.from_numpy(mols.molecule_index).long()
    x = remove_mean(torch.from_numpy(mols.positions), batch, k)
    h = LAYOUT.encode_numbers(mols.numbers)
    xs, hs = x.repeat(repeat, 1), h.repeat(repeat, 1)
    bs = torch.cat([batch + r * k for r in range(repeat)])
    return MolState(bs, k * repeat, pos=xs, atom_type=hs)


def _overfit(steps, fixed_noise, lr):
    from moldiff.nn.egnn import EGNN

    torch.manual_seed(0)
    clean = _qm9_batch()
    net = EGNN(LAYOUT.dim, hidden=64, layers=3)
    eps_fn = state_denoiser(net)
    loss = DiffusionLoss(VPSDE(PolynomialSchedule()), LAYOUT, "simple", timesteps=1000)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def evaluate():
        with torch.no_grad():
            draws = 1 if fixed_noise else 8
            g = torch.Generator().manual_seed(1)
            return float(torch.cat([loss(eps_fn, clean, g)[0] for _ in range(draws)]).mean())

    before = evaluate()
    for _ in range(steps):
        g = torch.Generator().manual_seed(1) if fixed_noise else None
        value = loss(eps_fn, clean, g)[0].mean()
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return before, evaluate()


def test_tiny_egnn_overfits_eight_qm9_molecules():
    """Memorising 8 noised QM9 molecules: the loss falls >= 10x (about 300x; ~4 s on 2 cores)."""
    before, after = _overfit(300, fixed_noise=True, lr=3e-3)
    assert before > 0.5 and after < before / 10


def test_tiny_egnn_learns_eight_qm9_molecules_under_fresh_noise():
    """Fresh t and noise every step: the loss still falls >= 4x in 600 steps (~6x; ~10 s)."""
    before, after = _overfit(600, fixed_noise=False, lr=1e-3)
    assert after < before / 4


# --- recipe variants: x0-error weighting, low-noise oversampling ----------------------------------
def test_snr_clip_is_the_simple_error_times_clipped_snr_over_snr():
    sde = VPSDE(PolynomialSchedule())
    g = torch.Generator().manual_seed(3)
    batch, n = sizes_to_batch([5] * 200)
    x0 = remove_mean(torch.randn(len(batch), 3, generator=g, dtype=torch.float64), batch, n)
    h0 = LAYOUT.encode_indices(torch.randint(0, 5, (len(batch),), generator=g), torch.float64)
    zero = lambda z, t: {"pos": torch.zeros_like(z.pos), "atom_type": torch.zeros_like(z.atom_type)}  # noqa: E731
    clean = MolState(batch, n, pos=x0, atom_type=h0)
    simple, t1 = DiffusionLoss(sde, LAYOUT, "simple")(zero, clean, torch.Generator().manual_seed(0))
    clipped, t2 = DiffusionLoss(sde, LAYOUT, "snr_clip", snr_clip=(0.05, 1.5))(zero, clean, torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2)
    snr = sde.schedule.snr(t1)
    assert torch.allclose(clipped, simple * snr.clamp(0.05, 1.5) / snr, rtol=1e-12)
    # in x0 terms: weight clip(SNR) on ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR
    assert float((clipped / simple)[snr > 1.5].max()) < 1.0 < float((clipped / simple)[snr < 0.05].min())


@pytest.mark.parametrize("timesteps", [1000, None])
def test_low_t_oversampling_draws_that_fraction_at_low_noise(timesteps):
    sde = VPSDE(PolynomialSchedule())
    like = torch.zeros(1, dtype=torch.float64)
    plain = DiffusionLoss(sde, LAYOUT, "simple", timesteps=timesteps)
    t = plain.sample_times(1000, like, torch.Generator().manual_seed(0))
    if timesteps:  # no oversampling: the draws L_simple always made (exact resume of older runs)
        expected = torch.randint(1, 1001, (1000,), generator=torch.Generator().manual_seed(0)).double() / 1000
        assert torch.equal(t, expected)
    low = DiffusionLoss(sde, LAYOUT, "simple", timesteps=timesteps, low_t=(0.5, 0.01)).sample_times(1000, like, torch.Generator().manual_seed(0))
    assert (low[:500] <= 0.01).all() and (low[:500] > 0).all() and float((low[500:] > 0.01).float().mean()) > 0.9
    if timesteps:
        assert set(torch.unique(low[:500] * 1000).round().tolist()) == set(range(1, 11))
    with pytest.raises(ValueError, match="low_t"):
        DiffusionLoss(sde, LAYOUT, "simple", low_t=(1.5, 0.05))
    with pytest.raises(ValueError, match="bias"):
        DiffusionLoss(sde, LAYOUT, "vlb", low_t=(0.5, 0.05), t0=1e-3)


def test_lr_decay_factors():
    from moldiff.train.module import lr_factor

    cos, lin = lr_factor("cosine", 100, 0.1), lr_factor("linear", 100, 0.0)
    assert cos(0) == 1.0 and abs(cos(50) - 0.55) < 1e-12 and abs(cos(100) - 0.1) < 1e-12 and cos(500) == cos(100)
    assert lin(25) == 0.75 and lin(100) == 0.0
    warm = lr_factor("cosine", 100, 0.1, warmup=10)
    assert warm(0) == 0.1 * cos(0) and warm(4) == 0.5 * cos(4) and warm(9) == cos(9) and warm(50) == cos(50)
    with pytest.raises(ValueError, match="decay"):
        lr_factor("step", 100, 0.1)
    with pytest.raises(ValueError, match="warmup"):
        lr_factor("cosine", 100, 0.1, warmup=-1)


def test_field_weights_scale_each_fields_error_and_only_where_they_may():
    """loss.weights: each field's share of the simple loss is its weight times its error; the
    default (1, 1) is the unweighted loss; the VLB and unknown fields refuse them."""
    sde = VPSDE(PolynomialSchedule())
    g = torch.Generator().manual_seed(3)
    batch, n = sizes_to_batch([5] * 50)
    clean = MolState(batch, n, pos=remove_mean(torch.randn(len(batch), 3, generator=g, dtype=torch.float64), batch, n),
                     atom_type=LAYOUT.encode_indices(torch.randint(0, 5, (len(batch),), generator=g), torch.float64))
    zero = lambda z, t: {"pos": torch.zeros_like(z.pos), "atom_type": torch.zeros_like(z.atom_type)}  # noqa: E731
    run = lambda **w: DiffusionLoss(sde, LAYOUT, "simple", **w)(zero, clean, torch.Generator().manual_seed(0))[0]  # noqa: E731
    plain, ones = run(), run(weights={"pos": 1.0, "atom_type": 1.0})
    pos_only, types_only = run(weights={"atom_type": 0.0}), run(weights={"pos": 0.0})
    assert torch.equal(plain, ones)
    assert torch.allclose(pos_only + types_only, plain, rtol=1e-12) and float(types_only.min()) > 0
    assert torch.allclose(run(weights={"pos": 3.0, "atom_type": 0.4}), 3.0 * pos_only + 0.4 * types_only, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown fields"):
        DiffusionLoss(sde, LAYOUT, "simple", weights={"bond": 1.0})
    with pytest.raises(ValueError, match="VLB"):
        DiffusionLoss(sde, LAYOUT, "vlb", t0=1e-3, weights={"pos": 2.0})
