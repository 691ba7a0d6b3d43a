"""Issue 29: the Gaussian model carries the molecule state (``MolState``) through data, noise,
network, loss, samplers, guidance, likelihood and bridge, and gives the numbers it gave before
(commit fc00479, when the pair (x, h) travelled between layers): training losses, ELBO and ODE
likelihoods, guided molecules, fragment inpainting with resampling, and a bridge refinement's
weights. ``tests/test_shipped_model.py`` checks the seven samplers the same way."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moldiff.data.loader import MoleculeDataset
from moldiff.data.qm9 import load_qm9
from moldiff.model.diffusion import DiffusionModel

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("plain_linear")
GOLDEN = json.loads((Path(__file__).parent / "data" / "gaussian_path_fc00479.json").read_text())


def close(got, want, rel=1e-5, abs_=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= abs_ + rel * np.abs(want)), float(np.abs(got - want).max())


@pytest.fixture(scope="module")
def shipped():
    return DiffusionModel.load("shipped")


@pytest.mark.parametrize("weighting,timesteps", [("simple", 1000), ("simple", None), ("snr_clip", 1000), ("snr_clip", None),
                                                 ("vlb", 1000), ("vlb", None)])
def test_training_losses_are_those_before_the_state(shipped, weighting, timesteps):
    from moldiff.model.checkpoint import read_checkpoint
    from moldiff.train.module import DiffusionModule

    hp = dict(read_checkpoint("shipped")["hyper_parameters"])
    loss = dict(hp["loss"], weighting=weighting, timesteps=timesteps, t0=1e-3 if weighting == "vlb" else 0.0)
    if weighting == "simple" and timesteps is None:
        loss["low_t"] = {"fraction": 0.5, "t_max": 0.05}
    module = DiffusionModule(hp["model"], hp["noise"], loss, hp["features"], hp.get("optim", {"lr": 1e-4}), hp["size_histogram"],
                             hp.get("ema_decay", 0.999))
    module.load_state_dict(shipped.state_dict())
    batch = MoleculeDataset(load_qm9("train").subset(np.arange(8)), shipped.layout)[np.arange(8)]
    with torch.no_grad():
        values = module.batch_loss(batch, True, torch.Generator().manual_seed(11)).numpy()
    close(values, GOLDEN["loss"][f"{weighting}/{timesteps}"])


LIKELIHOODS = {
    "elbo_all": ({"method": "elbo", "elbo": {"T": 8, "timesteps": "all"}}, 4),
    "elbo_k": ({"method": "elbo", "elbo": {"T": 50, "timesteps": 3}}, 4),
    "ode_h": ({"method": "ode", "ode": {"divergence": "hutchinson", "probes": 2, "rtol": 1e-3, "atol": 1e-3, "t0": 1e-3,
                                        "dequantization": "diffusion"}}, 2),
}


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihoods_are_those_before_the_state(shipped, name):
    from moldiff.jobs.likelihood import score_batch

    cfg, k = LIKELIHOODS[name]
    batch = MoleculeDataset(load_qm9("test").subset(np.arange(4)), shipped.layout)[np.arange(k)]
    out = score_batch(shipped, cfg["method"], batch, OmegaConf.create({"ema": True, **cfg}), torch.Generator().manual_seed(5))
    want = GOLDEN["likelihood"][name]
    assert sorted(out) == sorted(want)
    for key, values in want.items():
        close(out[key], values, rel=1e-6, abs_=1e-6)


def test_fragment_inpainting_with_resampling_is_as_before(shipped):
    mols = shipped.sample(2, steps=5, seed=3, n_atoms=19, fragment=ROOT / "datasets/examples/qm9_test_5777_fragment.sdf",
                          progress=False, resample=2, reconstruction=0)  # fc00479 had no reconstruction guidance
    ref = GOLDEN["fragment_resample"]
    assert mols.numbers.tolist() == ref["numbers"]
    close(mols.positions, ref["positions"], rel=0, abs_=2e-5)


def test_guided_design_is_as_before(tmp_path):
    from moldiff.jobs.guide import run_guidance

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("guide", ["n=3", "steps=5", "batch_size=2", "target=80", f"output={tmp_path}", "evaluation=null"])
    result = run_guidance(cfg, tmp_path)
    close(result["predictions"], GOLDEN["guide"]["predictions"], rel=1e-4)
    lines = [line.split() for line in (tmp_path / "samples.xyz").read_text().splitlines()]
    positions = [[float(c) for c in line[1:4]] for line in lines if len(line) == 4]
    close(positions, GOLDEN["guide"]["positions"], rel=1e-5, abs_=2e-5)  # the file's 6 decimals


def test_bridge_refinement_trains_as_before(tmp_path):
    from moldiff.jobs.refine_bridge import run_refinement

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("refine_bridge", ["ckpt=shipped", "steps=3", "horizon=0.7", "phase_steps=2", "coupling=4", "batch_size=2",
                                        "iterations=1", "sim_batch_size=4", "data_max=16", "logs=[]", "trainer.enable_progress_bar=false",
                                        f"checkpoint.dir={tmp_path}", f"export={tmp_path}/refined.ckpt"])
    module, _ = run_refinement(cfg, tmp_path)
    state = module.state_dict()
    for key, value in GOLDEN["bridge"].items():
        close(float(state[key].double().abs().sum()), value, rel=1e-6)
