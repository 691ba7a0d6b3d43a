"""The conditional model (EDM-style context input): normalisation, equivariance with a context,
warm start from an unconditional checkpoint, training, sampling and clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from equivariance import assert_equivariant
from moldiff.nn.egnn import EGNN
from moldiff.nn.context import Context, ContextSlot
from moldiff.state import MolState

ROOT = Path(__file__).resolve().parents[1]


def test_context_normalisation_is_edms_mean_and_mad():
    y = np.array([[1.0, 10.0], [3.0, 10.5], [5.0, 12.0]])
    c = Context.fit(["a", "b"], y)
    assert np.allclose(c.mean, [3.0, 65 / 6]) and np.allclose(c.mad, [4 / 3, np.abs(y[:, 1] - 65 / 6).mean()])
    z = c.normalise(torch.tensor(y), torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(z[:, 0], torch.tensor([-1.5, 0.0, 1.5], dtype=torch.float64))
    assert Context.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="expected targets"):
        c.normalise(torch.ones(3), torch.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        c.normalise(torch.tensor([[1.0, float("nan")]]), torch.zeros(1))
    with pytest.raises(ValueError, match="constant"):
        Context.fit(["a"], np.ones((4, 1)))


def _e3nn(**kw):
    from moldiff.nn.e3nn_net import E3NNNet

    return E3NNNet(6, hidden_irreps="8x0e + 4x1o", layers=1, lmax=1, radial_hidden=8, **kw)


@pytest.mark.parametrize("make", [lambda **kw: EGNN(6, hidden=16, layers=2, **kw), _e3nn], ids=["egnn", "e3nn"])
def test_conditional_network_is_equivariant_and_uses_its_context(make):
    torch.manual_seed(0)
    net = make(context_features=2, dtype=torch.float64)
    batch = torch.tensor([0] * 5 + [1] * 4)
    x, h, t = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    x = x - torch.zeros(2, 3, dtype=torch.float64).index_add_(0, batch, x)[batch] / torch.bincount(batch)[batch, None]
    c = torch.randn(2, 2, dtype=torch.float64)
    ex, eh = net(x, h, t, batch, 2, context=c)
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, 2, context=c), x, h, batch, 2, atol=1e-10, shift=None,
                       reference=(ex, eh))
    ex2, _ = net(x, h, t, batch, 2, context=c + 1)
    assert (ex2 - ex).abs().max() > 1e-6  # the context reaches the output
    with pytest.raises(ValueError, match="conditional"):
        net(x, h, t, batch, 2)
    with pytest.raises(ValueError, match="values per molecule"):
        net(x, h, t, batch, 2, context=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unconditional"):
        make(dtype=torch.float64)(x, h, t, batch, 2, context=c)


def test_warm_start_from_an_unconditional_model_starts_at_its_predictions(tiny_diffusion):
    from moldiff.train.module import DiffusionModule
    from moldiff.jobs.train import warm_start

    base = DiffusionModule.load_from_checkpoint(tiny_diffusion, weights_only=True).eval()
    hp = dict(base.hparams)
    module = DiffusionModule(**{**hp, "context": Context(["alpha"], [75.0], [6.0]).to_dict()}).eval()
    warm_start(module, tiny_diffusion)
    batch = torch.tensor([0] * 4 + [1] * 3)
    x, h, t = torch.randn(7, 3), torch.randn(7, base.layout.dim), torch.rand(2)
    state = MolState(batch, 2, pos=x, atom_type=h)
    ex, eh = base.eps_fn()(state, t).values()
    cx, ch = module.eps_fn(context=torch.tensor([60.0, 90.0]))(state, t).values()
    assert torch.allclose(ex, cx, atol=1e-6) and torch.allclose(eh, ch, atol=1e-6)
    with pytest.raises(ValueError, match="conditional on"):
        module.eps_fn()
    with pytest.raises(ValueError, match="unconditional"):
        base.eps_fn(context=torch.zeros(2))


@pytest.fixture(scope="module")
def conditional_ckpt(tmp_path_factory):
    from moldiff.jobs.train import run_training

    tmp = tmp_path_factory.mktemp("cond")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        # 16 molecules in batches of 8: two epochs in 4 steps, each ending in a conditional sample-and-evaluate
        cfg = compose("train", ["experiment=tiny", "context=[alpha]", "dataset.train=qm9:train_second_half", "dataset.train_max=16",
                                "trainer.max_steps=4", "evaluate.every_n_epochs=1", "evaluate.n=3", "evaluate.steps=2",
                                "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp}"])
        run_training(cfg, tmp)
    return tmp / "last.ckpt"


def test_conditional_model_trains_samples_and_rejects_missing_targets(conditional_ckpt, tmp_path):
    from moldiff.data.qm9 import load_qm9
    from moldiff.jobs.guide import base_eps
    from moldiff.sampling.generate import generate
    from moldiff.jobs.sample import run_sampling
    from moldiff.model.diffusion import DiffusionModel

    module = DiffusionModel.load(conditional_ckpt, torch.device("cpu"))
    assert module.context.names == ["alpha"]
    alphas = load_qm9("train_second_half").properties["alpha"]
    assert 40 < module.context.mean[0] < 110 and module.context.mad[0] < np.abs(alphas - alphas.mean()).mean() * 3
    mols = generate(module, 4, steps=3, context=torch.tensor([60.0, 70.0, 80.0, 90.0]), batch_size=2, progress=False)
    assert len(mols) == 4
    with pytest.raises(ValueError, match="conditional on"):
        generate(module, 2, steps=2, progress=False)
    with pytest.raises(ValueError, match="targets for 2"):
        generate(module, 2, steps=2, context=torch.zeros(3), progress=False)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        ok = compose("sample", [f"ckpt={conditional_ckpt}", "n=3", "steps=2", "target=75", "evaluation=null", f"output={tmp_path / 's'}"])
        missing = compose("sample", [f"ckpt={conditional_ckpt}", "n=3", "steps=2", "evaluation=null", f"output={tmp_path / 'm'}"])
        too_many = compose("sample", [f"ckpt={conditional_ckpt}", "n=3", "steps=2", "target=[75,0.3]", "evaluation=null", f"output={tmp_path / 't'}"])
    run_sampling(ok, tmp_path)
    assert (tmp_path / "s" / "samples.sdf").exists()
    with pytest.raises(ValueError, match="give target"):
        run_sampling(missing, tmp_path)
    with pytest.raises(ValueError, match="2 values"):
        run_sampling(too_many, tmp_path)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        lcfg = compose("likelihood", [f"ckpt={conditional_ckpt}", "n=3", "batch_size=3", "elbo.T=10", f"output={tmp_path / 'l'}"])
    from moldiff.jobs.likelihood import run_likelihood

    assert np.isfinite(run_likelihood(lcfg, tmp_path)["nats_per_molecule"])  # p(molecule | its own alpha)
    eps, slot = base_eps(module, "alpha")
    assert isinstance(slot, ContextSlot)
    with pytest.raises(ValueError, match="only be guided towards"):
        base_eps(module, "gap")


def test_conditional_recipe_trains_on_the_second_half():
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["experiment=qm9_cond", "context=[gap]"])
    assert cfg.dataset.train == "qm9:train_second_half" and list(cfg.context) == ["gap"] and cfg.name == "qm9_cond_gap"
    from moldiff.jobs.train import check_config

    check_config(cfg)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        twice = compose("train", ["experiment=qm9_cond", "context=[gap,gap]"])
    with pytest.raises(ValueError, match="listed twice"):
        check_config(twice)


def test_guide_job_on_a_conditional_base(conditional_ckpt, tmp_path):
    """guide.py with a conditional base: the base is given the design target, guidance acts on top."""
    from moldiff.jobs.guide import run_guidance
    from moldiff.jobs.train_property import run_property_training

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        run_property_training(compose("train_property", ["role=guide", "property=alpha", "name=tiny", "train_max=16", "val_max=8",
                                                         "batch_size=8", "model.hidden=16", "model.layers=2", "trainer.max_steps=2",
                                                         "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp_path}/guide"]), tmp_path)
        base = [f"ckpt={conditional_ckpt}", f"guide_ckpt={tmp_path}/guide/last.ckpt", "n=3", "steps=3", "batch_size=2", "evaluation=null"]
        ok = compose("guide", base + ["property=alpha", "target=70", f"output={tmp_path / 'g'}"])
        other = compose("guide", base + ["property=gap", "target=0.3", f"output={tmp_path / 'x'}"])
    r = run_guidance(ok, tmp_path)
    assert r["targets"] == [70.0] * 3 and np.isfinite(r["mae"]) and r["guidance"]["guided_steps"] > 0
    with pytest.raises(ValueError, match="conditional on"):
        run_guidance(other, tmp_path)
