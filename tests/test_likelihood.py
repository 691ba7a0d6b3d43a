"""Likelihoods against exact answers: Gaussian point clouds in the zero-CoM space have a known
density at every t, so the ODE NLL, its Hutchinson estimate and the ELBO can be checked."""

import math

import numpy as np
import pytest
import torch

from moldiff.analytic import GaussianPointClouds
from moldiff.data.elements import QM9_VOCAB
from moldiff.data.features import FeatureLayout
from moldiff.likelihood.elbo import elbo
from moldiff.likelihood.ode_nll import dequantize, ode_nll
from moldiff.likelihood.terms import log_p_atoms, prior_kl
from moldiff.noise.schedules import LinearSchedule, PolynomialSchedule
from moldiff.noise.vp_sde import VPSDE
from moldiff.sampling.base import sizes_to_batch
from moldiff.state import MolState

SDE = VPSDE(PolynomialSchedule())
MODEL = GaussianPointClouds(SDE)


def data(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, n = sizes_to_batch(sizes)
    clean = MODEL.sample(batch, n, g)
    exact = -MODEL.log_prob(clean, t=torch.zeros(n, dtype=torch.float64))  # the marginal at t0 = 0
    return clean, exact, g


def test_ode_nll_with_exact_divergence_equals_the_exact_density():
    clean, exact, _ = data([3, 4, 5, 6, 7] * 4)
    r = ode_nll(MODEL.eps, SDE, clean)
    assert float((r["nll"] - exact).abs().max()) < 0.05  # measured: 8e-5 nats
    assert r["dims"].tolist()[:5] == [(k - 1) * 3 + 2 * k for k in (3, 4, 5, 6, 7)]


def test_hutchinson_estimate_is_within_three_standard_errors():
    clean, exact, g = data([5] * 40, seed=1)
    r = ode_nll(MODEL.eps, SDE, clean, divergence="hutchinson", probes=4, generator=g)
    diff = r["nll"] - exact
    se_mean = float(torch.sqrt((r["nll_se"] ** 2).sum())) / len(diff)  # standard error of the mean over molecules
    assert abs(float(diff.mean())) < 3 * se_mean
    assert float(r["nll_se"].mean()) > 0


def test_elbo_bounds_the_nll_and_tightens_with_T():
    clean, exact, g = data([5] * 300, seed=2)
    gaps = []
    for T in (50, 200, 1000):
        e = elbo(MODEL.eps, SDE, clean, T=T, generator=g)
        gap = e["nll"] - exact
        se = float(gap.std()) / math.sqrt(len(gap))
        assert float(gap.mean()) > -3 * se, T  # never below the exact NLL
        gaps.append(float(gap.mean()))
    assert gaps[0] > gaps[1] > gaps[2]  # measured: 857, 59, 8.3 nats per molecule
    assert gaps[2] < 0.05 * gaps[0]


def test_elbo_estimate_with_few_steps_is_unbiased_per_molecule():
    """Each molecule draws its own K steps, so the standard error over molecules covers the
    estimator: the mean lies within 3 of them of the full bound on the same molecules. With one
    draw shared by the batch (the old code) it missed by a median of 124 of them (100 repeats)."""
    # 1000 molecules: the first step, 1/T of the draws, carries most of the bound; a few hundred
    # molecules hit it a handful of times and their spread understates the error.
    clean, _, g = data([4] * 1000, seed=3)
    full = elbo(MODEL.eps, SDE, clean, T=200, generator=g)["nll"]
    seen = []

    def eps_fn(state, t):
        seen.append(t)
        return MODEL.eps(state, t)

    est = elbo(eps_fn, SDE, clean, T=200, timesteps=10, generator=g)
    diff = est["nll"] - full
    assert abs(float(diff.mean())) < 3 * float(diff.std()) / math.sqrt(len(diff))
    assert all(len(t.unique()) > 1 for t in seen[:10])  # the K calls (L_0 follows at t = 0): t per molecule
    assert bool((est["nll_se"] >= 0).all()) and float(est["nll_se"].mean()) > 0


def test_prior_kl_closed_form_and_log_pN():
    batch, n = sizes_to_batch([3])
    x = torch.zeros(3, 3, dtype=torch.float64)
    h = torch.zeros(3, 2, dtype=torch.float64)
    s2 = float(SDE.schedule.sigma2(torch.tensor(1.0, dtype=torch.float64)))
    d = 6 + 6
    assert abs(float(prior_kl(SDE, MolState(batch, n, pos=x, atom_type=h))) - 0.5 * d * (s2 - 1 - math.log(s2))) < 1e-12
    lp = log_p_atoms({3: 1, 5: 3}, *sizes_to_batch([3, 5]))
    assert torch.allclose(lp, torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64))


def test_dequantisation_stays_in_the_bins_and_counts_the_volume():
    layout = FeatureLayout(QM9_VOCAB)
    batch, n = sizes_to_batch([2, 3])
    h0 = layout.encode_numbers(np.array([6, 1, 8, 1, 1])).double()
    h, vol = dequantize(h0, layout, batch, n, torch.Generator().manual_seed(0))
    assert (layout.decode(h) == layout.decode(h0)).all()
    assert (layout.onehot(h) - layout.onehot(h0)).abs().max() <= 0.5 and (layout.charges(h) - layout.charges(h0)).abs().max() <= 0.5
    assert torch.allclose(vol, torch.tensor([2.0, 3.0], dtype=torch.float64) * (5 * math.log(4) + math.log(10)))


def test_diffusion_dequantisation_is_the_forward_kernel_and_edm_decoder():
    from moldiff.likelihood.ode_nll import diffusion_dequantize

    layout = FeatureLayout(QM9_VOCAB)
    batch, n = sizes_to_batch([2, 3])
    h0 = layout.encode_numbers(np.array([6, 1, 8, 1, 1])).double()
    z, extra = diffusion_dequantize(h0, SDE, layout, batch, n, 0.0, torch.Generator().manual_seed(0))
    s0 = float(SDE.schedule.sigma(torch.tensor(0.0, dtype=torch.float64)))
    a0 = float(SDE.schedule.alpha(torch.tensor(0.0, dtype=torch.float64)))
    eps = (z - a0 * h0) / s0
    log_q = torch.distributions.Normal(0.0, s0).log_prob(s0 * eps).sum(1)
    log_q = torch.zeros(n, dtype=torch.float64).index_add_(0, batch, log_q)
    # sigma_0 = 0.003: the decoder gives the true integers probability ~1, so the extra term is log q
    assert torch.allclose(extra, log_q, atol=1e-6)


def test_singular_start_is_refused():
    sde = VPSDE(LinearSchedule())
    clean, _, _ = data([3])
    with pytest.raises(ValueError, match="sigma"):
        ode_nll(GaussianPointClouds(sde).eps, sde, clean)
    with pytest.raises(ValueError, match="sigma"):
        elbo(GaussianPointClouds(sde).eps, sde, clean)


def test_likelihood_job_writes_values_and_summary(tmp_path, tiny_diffusion):
    """scripts/likelihood.py's job on a tiny trained checkpoint: CSV, summary, resumable pieces."""
    from hydra import compose, initialize_config_dir

    from moldiff.jobs.likelihood import run_likelihood

    root = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
    ckpt = tiny_diffusion
    with initialize_config_dir(root, version_base="1.3"):
        cfg = compose("likelihood", [f"ckpt={ckpt}", "n=6", "batch_size=3", "elbo.T=20", f"output={tmp_path / 'out'}"])
        bad = compose("likelihood", [f"ckpt={ckpt}", "method=flow"])
    s = run_likelihood(cfg, tmp_path)
    assert s["n"] == 6 and s["n_nonfinite"] == 0 and math.isfinite(s["nats_per_molecule"])
    rows = (tmp_path / "out" / "nll_elbo.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("dataset_index,nll,bits_per_dim")
    assert not (tmp_path / "out" / ".partial_elbo").exists()
    with pytest.raises(ValueError, match="method"):
        run_likelihood(bad, tmp_path)


def test_likelihood_job_scores_an_sdf_file(tmp_path, tiny_diffusion):
    """split=<file> (configs/likelihood.yaml) scores that file, not the dataset split of its name;
    the K-step ELBO reports the estimator's share of the standard error."""
    from hydra import compose, initialize_config_dir

    from moldiff.data.qm9 import load_qm9
    from moldiff.io.convert import to_rdkit
    from moldiff.io.writers import write_sdf
    from moldiff.jobs.likelihood import run_likelihood, split_spec

    assert split_spec("test", "qm9") == "qm9:test" and split_spec("missing.sdf", "qm9") == "missing.sdf"
    test = load_qm9("test")
    sdf = tmp_path / "samples.sdf"  # 18 atoms: a size the tiny model's histogram has (log p(N) finite)
    write_sdf(sdf, to_rdkit(test.subset(np.flatnonzero(test.n_atoms == 18)[:3])), ["a", "b", "c"])
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        cfg = compose("likelihood", [f"ckpt={tiny_diffusion}", f"split={sdf}", "n=3", "batch_size=3", "elbo.T=10",
                                     "elbo.timesteps=2", f"output={tmp_path / 'out'}"])
    s = run_likelihood(cfg, tmp_path)
    assert s["source"] == str(sdf) and s["n"] == 3 and math.isfinite(s["nats_per_molecule"])
    assert 0 < s["estimator_se"] and math.isfinite(s["estimator_se"])


def test_ode_nll_through_an_egnn_hutchinson_agrees_with_exact():
    """The divergence through a real network (fused EGNN kernels, input gradients), float64."""
    from moldiff.geometry import remove_mean
    from moldiff.nn.denoiser import state_denoiser
    from moldiff.nn.egnn import EGNN

    torch.manual_seed(0)
    net = EGNN(4, hidden=8, layers=1, dtype=torch.float64)
    eps_fn = lambda z, t: {k: 0.3 * v for k, v in state_denoiser(net)(z, t).items()}  # noqa: E731  (a tame vector field)
    g = torch.Generator().manual_seed(0)
    batch, n = sizes_to_batch([3, 4])
    x = remove_mean(torch.randn(7, 3, generator=g, dtype=torch.float64), batch, n)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64)
    clean = MolState(batch, n, pos=x, atom_type=h)
    exact = ode_nll(eps_fn, SDE, clean, rtol=1e-6, atol=1e-6)["nll"]
    hutch = ode_nll(eps_fn, SDE, clean, divergence="hutchinson", probes=32, rtol=1e-6, atol=1e-6, generator=g)
    assert ((hutch["nll"] - exact).abs() < 3 * hutch["nll_se"] + 1e-6).all()


def test_likelihood_job_says_what_it_will_cost_before_it_starts():
    """Issue 32: the README's likelihood command ran ~75 minutes without a word about its cost."""
    from hydra import compose, initialize_config_dir

    from moldiff.jobs.likelihood import cost_estimate

    root = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        full = compose("likelihood", ["split=test", "n=1000", "method=elbo"])
        ode = compose("likelihood", ["method=ode", "ode.probes=1"])
    assert cost_estimate(full, 1000) == ("ELBO of 1000 molecules, 1000 network calls each: about 75 min on 2 CPU cores "
                                         "(elbo.timesteps=100: an unbiased estimate at a tenth of the cost)")
    assert cost_estimate(ode, 50) == "ODE NLL of 50 molecules, 1 Hutchinson probe(s) each: about 2 min on 2 CPU cores"
