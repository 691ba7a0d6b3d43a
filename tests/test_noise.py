"""Schedules and the VP SDE: closed forms against numerical integration, discrete <-> continuous."""

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from moldiff.geometry import max_com
from moldiff.noise import VPSDE, get_schedule
from moldiff.sampling.base import sizes_to_batch
from moldiff.state import MolState

SCHEDULES = ["linear", "cosine", "polynomial"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_closed_form_matches_integrated_beta(name):
    s = get_schedule(name)
    beta = lambda u: float(s.beta(torch.tensor(u, dtype=torch.float64)))  # noqa: E731
    a2_0 = float(s.alpha2(torch.tensor(0.0, dtype=torch.float64)))
    for t in [0.1, 0.3, 0.5, 0.7, 0.9, 0.99]:
        integral, _ = quad(beta, 0, t, epsabs=1e-12, epsrel=1e-12, limit=200)
        a2 = float(s.alpha2(torch.tensor(t, dtype=torch.float64)))
        assert np.log(a2) - np.log(a2_0) == pytest.approx(-integral, abs=1e-6)


@pytest.mark.parametrize("name", SCHEDULES)
def test_derived_quantities(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    lam = s.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()  # SNR falls with time
    assert torch.allclose(s.snr(t), s.alpha2(t) / s.sigma2(t))
    # d lambda / dt by finite differences
    e = 1e-6
    fd = (s.log_snr(t + e) - s.log_snr(t - e)) / (2 * e)
    assert torch.allclose(s.dlog_snr_dt(t), fd, rtol=1e-5)
    assert torch.allclose(s.t_of_log_snr(lam), t, atol=1e-9)


def test_linear_schedule_endpoints():
    s = get_schedule("linear")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert s.beta(t).tolist() == pytest.approx([0.1, 20.0])
    assert float(s.alpha(t)[1]) == pytest.approx(np.exp(-0.5 * (0.1 + 0.5 * 19.9)))


@pytest.mark.parametrize("name", SCHEDULES)
def test_discrete_and_continuous_time_agree(name):
    s = get_schedule(name)
    errs, log_errs = [], []
    for T in (100, 1000, 10000):
        betas = s.discrete_betas(T)
        ti = torch.arange(1, T + 1, dtype=torch.float64) / T
        mid = ti - 0.5 / T
        keep = ti < 0.95  # away from the end, where cosine/polynomial beta blows up
        errs.append(float((betas[keep] * T - s.beta(mid[keep])).abs().max()))
        log_errs.append(float((-torch.log1p(-betas[keep]) * T - s.beta(mid[keep])).abs().max()))
        # The product of (1 - beta_i) is exactly the continuous alpha^2 on the grid.
        a2 = torch.cumprod(1 - betas, 0) * s.alpha2(torch.tensor(0.0, dtype=torch.float64))
        assert torch.allclose(a2, s.alpha2(ti), rtol=1e-9, atol=1e-12)
    # beta_i ~ beta(t) dt to first order in 1/T; -log(1 - beta_i) is the midpoint rule, second order.
    assert errs[2] < errs[0] / 40 and errs[2] < 0.1
    assert log_errs[2] < max(log_errs[0] / 2000, 1e-9)  # exact for the linear schedule


def test_perturb_keeps_centre_of_mass_and_marginal():
    sde = VPSDE(get_schedule("polynomial"))
    g = torch.Generator().manual_seed(0)
    batch, n = sizes_to_batch([3, 7, 12] * 200)
    x0 = torch.randn(len(batch), 3, generator=g, dtype=torch.float64)
    from moldiff.geometry import remove_mean

    x0 = remove_mean(x0, batch, n)
    h0 = torch.randn(len(batch), 4, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    noisy, eps = sde.perturb(MolState(batch, n, pos=x0, atom_type=h0), t, g)
    xt, ht, ex, eh = noisy.pos, noisy.atom_type, eps["pos"], eps["atom_type"]
    assert max_com(xt, batch, n) < 1e-6 and max_com(ex, batch, n) < 1e-6
    a, s = sde.alpha(t, batch), sde.sigma(t, batch)
    assert torch.allclose(xt, a * x0 + s * ex) and torch.allclose(ht, a * h0 + s * eh)
    # Centred noise has variance (N-1)/N per coordinate.
    counts = torch.bincount(batch)[batch].to(torch.float64)
    ratio = (ex**2).sum(1) / (3 * (counts - 1) / counts)
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisation_round_trips(prediction):
    """Each prediction target, converted by the SDE's one parameterisation, gives back the exact
    noise; x0, score and the PF drift agree with their definitions."""
    sde = VPSDE(get_schedule("polynomial"), prediction=prediction)
    batch, n = sizes_to_batch([5, 7])
    g = torch.Generator().manual_seed(0)
    x0, h0 = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    noisy, eps = sde.perturb(MolState(batch, n, pos=x0, atom_type=h0), t, g)
    xt, ht, ex, eh = noisy.pos, noisy.atom_type, eps["pos"], eps["atom_type"]
    a, s = sde.alpha(t, batch), sde.sigma(t, batch)
    target = {"eps": (ex, eh), "x0": (x0, h0), "v": (a * ex - s * x0, a * eh - s * h0)}[prediction]
    px, ph = sde.eps_from_output(dict(zip(("pos", "atom_type"), target)), noisy, t).values()
    assert torch.allclose(px, ex, atol=1e-12) and torch.allclose(ph, eh, atol=1e-12)
    clean = sde.x0_from_eps(noisy, eps, t)
    rx, rh = clean.pos, clean.atom_type
    assert torch.allclose(rx, x0, atol=1e-12) and torch.allclose(rh, h0, atol=1e-12)
    sx, sh = sde.score(eps, t, batch).values()
    dx, dh = sde.pf_drift(noisy, eps, t).values()
    beta = sde.beta(t, batch)
    assert torch.allclose(dx, -0.5 * beta * xt - 0.5 * beta * sx, atol=1e-12)
    assert torch.allclose(dh, -0.5 * beta * ht - 0.5 * beta * sh, atol=1e-12)


def test_transition_composes_to_the_marginal():
    sde = VPSDE(get_schedule("cosine"))
    batch = torch.tensor([0, 1])
    s, t = torch.tensor([0.2, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.9], dtype=torch.float64)
    a_ts, v_ts = sde.transition(s, t, batch)
    assert torch.allclose(a_ts * sde.alpha(s, batch), sde.alpha(t, batch), atol=1e-12)
    assert torch.allclose(a_ts**2 * sde.sigma(s, batch) ** 2 + v_ts, sde.sigma(t, batch) ** 2, atol=1e-12)


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction"):
        VPSDE(get_schedule("cosine"), prediction="score")
