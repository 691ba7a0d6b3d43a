"""Energy guidance through the eps interface: zero scale changes nothing, guidance moves samples
the way the energy says, positions stay centred, failures are counted and never crash."""

import math

import numpy as np
import pytest
import torch

from equivariance import assert_equivariant
from moldiff.analytic import GaussianPointClouds
from moldiff.data.elements import QM9_VOCAB
from moldiff.data.features import FeatureLayout
from moldiff.geometry import max_com, remove_mean
from moldiff.guidance.guided import Energy, Scale, guided
from moldiff.guidance.property_energy import PropertyEnergy
from moldiff.nn.property import PropertyPredictor
from moldiff.noise.schedules import PolynomialSchedule
from moldiff.noise.vp_sde import VPSDE
from moldiff.nn.egnn import EGNN
from moldiff.sampling.base import sizes_to_batch
from moldiff.nn.denoiser import state_denoiser
from moldiff.sampling.samplers import sample
from moldiff.state import MolState

SDE = VPSDE(PolynomialSchedule())
LAYOUT = FeatureLayout(QM9_VOCAB)
FIELDS = ("pos", "atom_type")


class Quadratic(Energy):
    """1/2 |h - c|^2 + 1/2 |x - a|^2 summed per molecule (not translation invariant on purpose)."""

    name = "quadratic"

    def __init__(self, c, a=0.0):
        self.c, self.a = c, a

    def energy(self, state, t, eps=None):
        x, h, batch, n = state.pos, state.atom_type, state.batch, state.n_mol
        per_atom = 0.5 * (h - self.c).square().sum(1) + 0.5 * (x - self.a).square().sum(1)
        return torch.zeros(n, dtype=x.dtype).index_add_(0, batch, per_atom)


@pytest.mark.parametrize("sampler", ["ancestral", "pc", "ode_dpm2"])
def test_zero_scale_reproduces_unguided_sampling_exactly(sampler):
    torch.manual_seed(0)
    net = state_denoiser(EGNN(LAYOUT.dim, hidden=16, layers=2))
    pred = PropertyPredictor(LAYOUT.dim, hidden=16, layers=2)
    fn = guided(net, SDE, [(PropertyEnergy(pred, 3.0), Scale(0.0))])
    a = sample(sampler, net, SDE, [4, 6], LAYOUT.dim, steps=5, generator=torch.Generator().manual_seed(1))
    b = sample(sampler, fn, SDE, [4, 6], LAYOUT.dim, steps=5, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a.take(FIELDS).values(), b.take(FIELDS).values()))
    assert fn.report.steps == 0


def test_guidance_moves_samples_towards_low_energy_and_keeps_com():
    model = GaussianPointClouds(SDE)
    sizes = [5] * 300
    c = 2.0
    fn = guided(model.eps, SDE, [(Quadratic(c, a=3.0), Scale(1.0))])
    g = torch.Generator().manual_seed(0)
    out0 = sample("ancestral", model.eps, SDE, sizes, model.feat_dim, steps=100, generator=g, dtype=torch.float64)
    h0, batch = out0.atom_type, out0.batch
    g = torch.Generator().manual_seed(0)
    out1 = sample("ancestral", fn, SDE, sizes, model.feat_dim, steps=100, generator=g, dtype=torch.float64)
    x1, h1 = out1.pos, out1.atom_type
    assert abs(float(h1.mean()) - c) < abs(float(h0.mean()) - c) - 0.5  # pulled towards c
    assert max_com(x1, batch, len(sizes)) < 1e-6  # a translation-variant energy does not move the CoM


def test_failed_and_nan_gradients_are_counted_and_left_unguided():
    class Flaky(Energy):
        name = "flaky"
        last_reasons = None

        def gradient(self, state, t, eps=None):
            x, h, batch, n = state.pos, state.atom_type, state.batch, state.n_mol
            gx, gh = torch.ones_like(x), torch.ones_like(h)
            gx[batch == 1] = float("nan")  # molecule 1: NaN gradient
            ok = torch.ones(n, dtype=torch.bool)
            ok[2] = False  # molecule 2: the energy could not be evaluated
            self.last_reasons = [None, None, "SCF not converged"]
            return {"pos": gx, "atom_type": gh}, ok

    batch, n = sizes_to_batch([3, 3, 3])
    x = remove_mean(torch.randn(9, 3, dtype=torch.float64), batch, n)
    h = torch.randn(9, 2, dtype=torch.float64)
    base = GaussianPointClouds(SDE).eps
    fn = guided(base, SDE, [(Flaky(), Scale(1.0))])
    t = torch.full((n,), 0.5, dtype=torch.float64)
    state = MolState(batch, n, pos=x, atom_type=h)
    ex, eh = fn(state, t).values()
    bx, bh = base(state, t).values()
    assert torch.isfinite(ex).all() and torch.isfinite(eh).all()
    assert torch.equal(ex[batch == 1], bx[batch == 1]) and torch.equal(ex[batch == 2], bx[batch == 2])
    assert not torch.equal(eh[batch == 0], bh[batch == 0])
    rep = fn.report.to_dict()
    assert rep["failures"] == {"flaky: SCF not converged": 1, "flaky: non-finite gradient": 1}


class Pathological(Energy):
    """1e-4 (|x|^2 + |h|^2) / 2 per molecule, broken differently for molecules 0-2 (3 is sound):
    0: a NaN gradient (sqrt at 0), 1: a finite gradient (1e38) that overflows float32 once scaled,
    2: an infinite energy with a finite gradient."""

    name = "patho"

    def energy(self, state, t, eps=None):
        x, h, batch, n = state.pos, state.atom_type, state.batch, state.n_mol
        per_atom = 0.5e-4 * (x.square().sum(1) + h.square().sum(1))
        e = torch.zeros(n, dtype=x.dtype).index_add_(0, batch, per_atom)
        x0, x1 = x[batch == 0], x[batch == 1]
        kink = (x0 - x0.detach()).square().sum(1).sqrt().sum()  # 0, with gradient 0 * inf
        steep = 1e38 * ((x1 - x1.detach()) * x1.detach().sign()).sum()  # 0, with gradient +-1e38
        return e + torch.stack([kink, steep, torch.tensor(math.inf, dtype=x.dtype), torch.zeros((), dtype=x.dtype)])


@pytest.mark.parametrize("sampler", ["ancestral", "ode_heun"])
def test_guided_sampling_never_makes_a_coordinate_non_finite(sampler):
    model = GaussianPointClouds(SDE)
    sizes = [3, 3, 3, 3]
    fn = guided(model.eps, SDE, [(Pathological(), Scale(1e4))])
    out = sample(sampler, fn, SDE, sizes, model.feat_dim, steps=10, generator=torch.Generator().manual_seed(0))
    x, h, batch = out.pos, out.atom_type, out.batch
    assert torch.isfinite(x).all() and torch.isfinite(h).all()
    steps = fn.report.steps
    assert fn.report.to_dict()["failures"] == {"patho: non-finite gradient": steps, "patho: guidance overflow": steps,
                                               "patho: non-finite energy": steps}
    x0 = sample(sampler, model.eps, SDE, sizes, model.feat_dim, steps=10, generator=torch.Generator().manual_seed(0)).pos
    assert not torch.equal(x[batch == 3], x0[batch == 3])  # the sound molecule is still guided
    assert torch.equal(x[batch < 3], x0[batch < 3])  # the broken ones sample as unguided


def test_non_finite_eps_of_the_model_is_counted_once_not_per_energy():
    base = GaussianPointClouds(SDE).eps

    def broken(state, t):
        ex, eh = base(state, t).values()
        return {"pos": torch.where((state.batch == 1)[:, None], torch.nan, ex), "atom_type": eh}

    batch, n = sizes_to_batch([3, 3])
    x = remove_mean(torch.randn(6, 3, dtype=torch.float64), batch, n)
    fn = guided(broken, SDE, [(Quadratic(1.0), Scale(1.0)), (Pathological(), Scale(0.0))])
    fn(MolState(batch, n, pos=x, atom_type=torch.randn(6, 2, dtype=torch.float64)), torch.full((n,), 0.5, dtype=torch.float64))
    assert fn.report.to_dict()["failures"] == {"base model: non-finite eps": 1}


def test_clip_caps_each_molecules_guidance_at_a_multiple_of_its_eps():
    """clip: a molecule whose guidance term is larger than clip x |eps| gets exactly that norm, in
    the same direction, zero CoM kept; one below it is untouched (bitwise); the capped pairs are
    counted; clip=None is the uncapped guidance."""
    torch.manual_seed(0)
    net = state_denoiser(EGNN(LAYOUT.dim, hidden=16, layers=2, dtype=torch.float64))
    batch, n = sizes_to_batch([4, 5])
    g = torch.Generator().manual_seed(0)
    x = remove_mean(torch.randn(9, 3, generator=g, dtype=torch.float64), batch, n)
    h = torch.randn(9, LAYOUT.dim, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    state = MolState(batch, n, pos=x, atom_type=h)
    # features pulled hard on molecule 0, gently on molecule 1 (positions at the energy's minimum)
    energy = Quadratic(h + torch.where(batch[:, None] == 0, 1e3, 1e-3).double(), a=x.clone())
    free = guided(net, SDE, [(energy, Scale(1.0))])
    capped = guided(net, SDE, [(energy, Scale(1.0))], clip=0.5)
    with torch.no_grad():
        ex, eh = net(state, t).values()
        fx, fh = free(state, t).values()
        cx, ch = capped(state, t).values()

    def norm(a, b, m):
        return float(torch.cat([a[batch == m].flatten(), b[batch == m].flatten()]).norm())

    assert norm(fx - ex, fh - eh, 0) > 10 * norm(ex, eh, 0)  # the free push on molecule 0 dwarfs its eps
    assert norm(cx - ex, ch - eh, 0) == pytest.approx(0.5 * norm(ex, eh, 0), rel=1e-9)
    ratio = (ch - eh)[batch == 0] / (fh - eh)[batch == 0]
    assert float((ratio - ratio.flatten()[0]).abs().max()) < 1e-9  # same direction
    assert norm(fx - ex, fh - eh, 1) < 0.5 * norm(ex, eh, 1)
    assert torch.equal(cx[batch == 1], fx[batch == 1]) and torch.equal(ch[batch == 1], fh[batch == 1])
    assert max_com(cx, batch, n) < 1e-12
    assert capped.report.clipped["quadratic"] == 1 and not free.report.clipped
    assert capped.report.to_dict()["clipped"] == {"quadratic": 1}
    with pytest.raises(ValueError, match="clip"):
        guided(net, SDE, [(energy, Scale(1.0))], clip=0.0)


def test_property_guidance_is_equivariant():
    torch.manual_seed(0)
    net = state_denoiser(EGNN(LAYOUT.dim, hidden=16, layers=2, dtype=torch.float64))
    pred = PropertyPredictor(LAYOUT.dim, hidden=16, layers=2).double()
    fn = guided(net, SDE, [(PropertyEnergy(pred, 1.5), Scale(2.0))])
    batch, n = sizes_to_batch([4, 5])
    g = torch.Generator().manual_seed(0)
    x = remove_mean(torch.randn(9, 3, generator=g, dtype=torch.float64), batch, n)
    h = torch.randn(9, LAYOUT.dim, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    assert_equivariant(lambda xi, hi, bi: tuple(fn(MolState(bi, n, pos=xi, atom_type=hi), t).values()), x, h, batch, n, atol=1e-10,
                       shift=None)


def test_xtb_guidance_on_a_real_molecule_and_a_failure():
    pytest.importorskip("tblite")
    from moldiff.data.qm9 import load_qm9
    from moldiff.guidance.xtb_energy import XTBEnergy

    mols = load_qm9("test").subset(np.arange(2))
    batch = torch.from_numpy(mols.molecule_index).long()
    x = remove_mean(torch.from_numpy(mols.positions).double(), batch, 2)
    h = LAYOUT.encode_numbers(mols.numbers).double()
    x[batch == 1] = 0.0  # molecule 1: every atom on one point, xTB cannot run
    t = torch.full((2,), 0.01, dtype=torch.float64)
    zero_eps = {"pos": torch.zeros_like(x), "atom_type": torch.zeros_like(h)}
    energy = XTBEnergy(SDE, LAYOUT)
    grads, ok = energy.gradient(MolState(batch, 2, pos=x, atom_type=h), t, zero_eps)
    gx = grads["pos"]
    assert ok.tolist() == [True, False] and energy.last_reasons[1]
    assert torch.isfinite(gx).all() and float(gx[batch == 0].abs().max()) > 0
    # a relaxed QM9 geometry: small forces (Hartree / Angstrom)
    assert float(gx[batch == 0].norm(dim=1).max()) < 0.1


@pytest.mark.parametrize("role", ["guide", "evaluator"])
def test_property_models_train_and_load(tmp_path, role):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.model.property import PropertyModel
    from moldiff.train.property_module import PropertyModule
    from moldiff.jobs.train_property import run_property_training

    root = str(Path(__file__).resolve().parents[1] / "configs")
    overrides = [f"role={role}", "property=gap", "train_max=64", "val_max=16", "batch_size=16", "model.hidden=16", "model.layers=2",
                 "trainer.max_steps=6", "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp_path}"]
    with initialize_config_dir(root, version_base="1.3"):
        cfg = compose("train_property", overrides)
        bad = compose("train_property", ["property=polarity"])
    module = run_property_training(cfg, tmp_path)
    assert module.net.encoder.time_conditioning == (role == "guide")
    loaded = PropertyModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert torch.allclose(loaded.net.mean, module.net.mean) and float(loaded.net.std) > 0
    plain = PropertyModel.load(tmp_path / "last.ckpt", role=role)  # a training checkpoint, without Lightning
    assert plain.targets == ["gap"] and all(torch.equal(v, loaded.state_dict()[k]) for k, v in plain.state_dict().items())
    with pytest.raises(ValueError, match="unknown"):
        run_property_training(bad, tmp_path)


def test_property_model_warm_start_continues_its_weights_and_record(tmp_path):
    """init_from: a new run (fresh optimizer) from a property model's weights, for longer training in
    legs; a model for other targets is refused with a clear error."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.model.checkpoint import read_checkpoint
    from moldiff.jobs.train_property import run_property_training

    root = str(Path(__file__).resolve().parents[1] / "configs")
    common = ["role=evaluator", "train_max=64", "val_max=16", "batch_size=16", "model.hidden=16", "model.layers=2",
              "trainer.enable_progress_bar=false", "logs=[]"]
    with initialize_config_dir(root, version_base="1.3"):
        first = compose("train_property", common + ["property=gap", "trainer.max_steps=4", f"checkpoint.dir={tmp_path / 'a'}"])
        src = tmp_path / "a" / "last.ckpt"
        # a vanishing learning rate: one step of the new run leaves the copied weights as they were
        second = compose("train_property", common + ["property=gap", "trainer.max_steps=1", "optim.lr=1e-15", f"init_from={src}",
                                                     f"checkpoint.dir={tmp_path / 'b'}"])
        other = compose("train_property", common + ["property=mu", "trainer.max_steps=1", f"init_from={src}", f"checkpoint.dir={tmp_path / 'c'}"])
        missing = compose("train_property", common + ["property=gap", f"init_from={tmp_path / 'none.ckpt'}"])
    run_property_training(first, tmp_path / "a")
    module = run_property_training(second, tmp_path / "b")
    before = read_checkpoint(src)["state_dict"]
    after = module.state_dict()
    assert max(float((before[k] - after[k].float()).abs().max()) for k in before) < 1e-8
    record = read_checkpoint(tmp_path / "b" / "last.ckpt")["moldiff_record"]
    assert [(leg["first_step"], leg["last_step"]) for leg in record] == [(0, 4), (0, 1)]
    with pytest.raises(ValueError, match="target"):
        run_property_training(other, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="init_from"):
        run_property_training(missing, tmp_path / "d")


def test_property_model_compact_export_keeps_its_predictions(tmp_path):
    """--compact on a property model (no EMA): its weight matrices in float16, about half the file;
    small tensors (biases, the target mean and spread) stay float32, so predictions move by float16
    rounding only, with no shift from a rounded mean (alpha's mean of 75 would move by 0.03)."""
    from pathlib import Path

    import numpy as np
    from hydra import compose, initialize_config_dir

    from moldiff.data.loader import MoleculeDataset
    from moldiff.jobs.train import load_split
    from moldiff.jobs.train_property import run_property_training
    from moldiff.train.export import export_checkpoint
    from moldiff.train.property_module import PropertyModule

    root = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        cfg = compose("train_property", ["property=alpha", "role=evaluator", "train_max=64", "val_max=16", "batch_size=16",
                                         "model.hidden=64", "model.layers=2", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                                         "logs=[]", f"checkpoint.dir={tmp_path}"])
    run_property_training(cfg, tmp_path)
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "full.ckpt")
    small = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "compact.ckpt", compact=True)
    assert small["moldiff_compact"]["network"] == "weights"
    assert small["state_dict"]["net.mean"].dtype == torch.float32 and small["state_dict"]["net.std"].dtype == torch.float32
    assert sum(v.dtype == torch.float16 for v in small["state_dict"].values()) > 0
    assert (tmp_path / "compact.ckpt").stat().st_size < 0.6 * (tmp_path / "full.ckpt").stat().st_size
    full, compact = (PropertyModule.load_from_checkpoint(tmp_path / f, map_location="cpu", weights_only=True).eval()
                     for f in ("full.ckpt", "compact.ckpt"))
    assert {p.dtype for p in compact.parameters()} == {torch.float32}
    mols = load_split("qm9:valid", full.layout, 32, 0).mols
    b = MoleculeDataset(mols, full.layout)[np.arange(32)]
    with torch.no_grad():
        t = torch.zeros(b.n_mol)
        pf, pc = (m.net.predict(b.x, b.h, t, b.batch, b.n_mol) for m in (full, compact))
    assert float((pf - pc).abs().max()) < 2e-3 * float(full.net.std.max())


def test_multi_task_property_model_has_one_column_per_target(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.data.loader import MoleculeDataset
    from moldiff.train.property_module import PropertyModule
    from moldiff.jobs.train_property import run_property_training
    from moldiff.jobs.train import load_split

    root = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        cfg = compose("train_property", ["property=all", "train_max=64", "val_max=16", "batch_size=16", "model.hidden=16", "model.layers=2",
                                         "trainer.max_steps=4", "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp_path}"])
    run_property_training(cfg, tmp_path)
    module = PropertyModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert module.targets == ["alpha", "gap", "homo", "lumo", "mu", "Cv"] and module.column("mu") == 4
    mols = load_split("qm9:train_first_half", module.layout, 64, 0).mols  # the run's training subset
    y = MoleculeDataset(mols, module.layout, module.targets).y
    # normalisation per column: the six properties live on scales from 0.01 (Hartree) to 75 (Bohr^3)
    assert torch.allclose(module.net.mean, y.mean(0), rtol=1e-4) and torch.allclose(module.net.std, y.std(0, unbiased=False), rtol=1e-3)
    b = MoleculeDataset(mols.subset(np.arange(3)), module.layout)[np.arange(3)]
    assert module.net.predict(b.x, b.h, torch.zeros(3), b.batch, 3).shape == (3, 6)
    with pytest.raises(ValueError, match="predicts"):
        module.column("polarity")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_diffusion):
    """The tiny diffusion checkpoint (conftest), a multi-task (gap, homo) guide and a gap evaluator, trained for a few steps."""
    import shutil
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.jobs.train_property import run_property_training

    tmp = tmp_path_factory.mktemp("models")
    (tmp / "diff").mkdir()
    shutil.copy(tiny_diffusion, tmp / "diff" / "last.ckpt")
    root = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        for role, prop in (("guide", "[gap,homo]"), ("evaluator", "gap")):
            run_property_training(compose("train_property", [f"role={role}", f"property={prop}", "name=tiny", "train_max=32", "val_max=8", "batch_size=16",
                                                             "model.hidden=16", "model.layers=2", "trainer.max_steps=2",
                                                             "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp}/{role}"]), tmp)
    return tmp


def _guide_cfg(models, *overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    root = str(Path(__file__).resolve().parents[1] / "configs")
    base = [f"ckpt={models}/diff/last.ckpt", f"guide_ckpt={models}/guide/last.ckpt", f"evaluator_ckpt={models}/evaluator/last.ckpt",
            "property=gap", "n=4", "steps=3", "batch_size=2", "evaluation=null"]
    with initialize_config_dir(root, version_base="1.3"):
        return compose("guide", base + list(overrides))


def test_guide_design_and_protocol_modes(tiny_models, tmp_path):
    import json

    from moldiff.jobs.guide import run_guidance

    r = run_guidance(_guide_cfg(tiny_models, "target=7.0", f"output={tmp_path / 'd'}"), tmp_path)
    assert r["targets"] == [7.0] * 4 and len(r["predictions"]) == 4 and math.isfinite(r["mae"])
    assert json.loads((tmp_path / "d" / "guidance.json").read_text())["mae"] == r["mae"]
    assert (tmp_path / "d" / "samples.sdf").exists()
    p = run_guidance(_guide_cfg(tiny_models, "mode=protocol", f"output={tmp_path / 'p'}"), tmp_path)
    assert p["scored_by"] == "evaluator" and len(set(p["targets"])) > 1
    assert set(p["baselines"]) == {"atoms", "upper_bound", "lower_bound"} and all(v > 0 for v in p["baselines"].values())
    # a multi-task model serves its homo column (the guide file stands in for an evaluator here)
    homo = run_guidance(_guide_cfg(tiny_models, "property=homo", "target=-0.25", f"evaluator_ckpt={tiny_models}/guide/last.ckpt",
                                   f"output={tmp_path / 'h'}"), tmp_path)
    assert homo["scored_by"] == "evaluator" and math.isfinite(homo["mae"])
    bounded = run_guidance(_guide_cfg(tiny_models, "target=7.0", "batch_atoms=30", f"output={tmp_path / 'b'}"), tmp_path)
    assert bounded["targets"] == [7.0] * 4 and len(bounded["predictions"]) == 4  # batches by atom count: targets still line up


def test_guide_job_never_writes_or_scores_a_non_finite_molecule(tiny_models, tmp_path, monkeypatch, capsys):
    import json

    from moldiff.jobs import guide as job

    real = job.generate

    def one_lost(*args, **kwargs):  # as if the base model had returned NaN for molecule 1
        mols = real(*args, **kwargs)
        mols.positions[mols.molecule_index == 1] = np.nan
        return mols

    monkeypatch.setattr(job, "generate", one_lost)
    r = job.run_guidance(_guide_cfg(tiny_models, "target=7.0", f"output={tmp_path}"), tmp_path)
    assert r["left_out"] == {"indices": [1], "reasons": {"nonfinite_coordinates": 1}}
    assert math.isfinite(r["mae"]) and r["n_scored"] == 3 and len(r["predictions"]) == len(r["targets"]) == 3
    for name in ("samples.sdf", "samples.xyz"):
        assert "nan" not in (tmp_path / name).read_text().lower(), name
    assert (tmp_path / "samples.sdf").read_text().count("$$$$") == 3

    def no_nan(c):
        raise ValueError(f"non-standard JSON constant {c}")

    assert json.loads((tmp_path / "guidance.json").read_text(), parse_constant=no_nan)["left_out"] == r["left_out"]
    printed = capsys.readouterr().out
    assert "over 3 of 4 molecules" in printed and "left out 1" in printed


def test_xtb_guidance_failures_are_counted_not_fatal(tiny_models, tmp_path):
    pytest.importorskip("tblite")
    from moldiff.jobs.guide import run_guidance

    # an almost untrained model makes geometries xTB often cannot handle: counted, sampling finishes
    r = run_guidance(_guide_cfg(tiny_models, "property=null", "xtb.scale=0.1", "xtb.t_max=0.4", "xtb.workers=1", "n=2", f"output={tmp_path}"), tmp_path)
    g = r["guidance"]
    assert g["guided_steps"] > 0 and (tmp_path / "samples.xyz").exists()
    assert sum(g["failures"].values()) >= 0 and set(g["molecules_with_failures"]) <= {"xtb"}


@pytest.mark.parametrize("override, message", [("property=polarity", "unknown 'polarity'"), ("target=null", "target"),
                                                ("scale=-1", "scales"), ("sampler=ddim", "sampler"), ("guide_ckpt=/nope.ckpt", "no checkpoint"),
                                                ("property=alpha", "predicts"), ("batch_atoms=0", "batch_atoms"), ("batch_size=0", "batch_size"),
                                                ("clip=0", "clip"), ("options={steps:3}", "top-level steps")])
def test_bad_guidance_options_fail_up_front(tiny_models, tmp_path, override, message):
    from moldiff.jobs.guide import run_guidance

    cfg = _guide_cfg(tiny_models, "target=7.0", override)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_guidance(cfg, tmp_path)


def test_guide_passes_sampler_options_and_keeps_the_exact_posterior_by_default(tiny_models, tmp_path, monkeypatch):
    """guide.py's options= reach the sampler as sample.py's do; without them the ancestral sampler keeps
    EDM's exact posterior (late_noise 1), as every guidance figure in docs/guidance.md was measured."""
    from moldiff.jobs import guide as job

    real, seen = job.generate, []
    monkeypatch.setattr(job, "generate", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    job.run_guidance(_guide_cfg(tiny_models, "target=7.0", f"output={tmp_path / 'exact'}"), tmp_path)
    job.run_guidance(_guide_cfg(tiny_models, "target=7.0", "options={late_noise:0.5,late_t:0.5}", f"output={tmp_path / 'late'}"), tmp_path)
    assert "late_noise" not in seen[0] and (seen[1]["late_noise"], seen[1]["late_t"]) == (0.5, 0.5)
    exact, late = ((tmp_path / d / "samples.xyz").read_text() for d in ("exact", "late"))
    assert exact != late


def test_atoms_baseline_reproduces_edm():
    """EDM's '#Atoms' row (Hoogeboom et al. 2022, table 3): mu 1.053, alpha 3.86, Cv 1.971,
    HOMO 426, LUMO 813, gap 866 meV. Measured here on the full second half: 1.054, 3.836, 1.959,
    427, 814, 868."""
    from moldiff.guidance.baselines import atoms_baseline

    edm = {"mu": 1.053, "alpha": 3.86, "Cv": 1.971, "homo": 0.426, "lumo": 0.813, "gap": 0.866}
    for prop, value in edm.items():
        assert abs(atoms_baseline(prop, 50_000) - value) < 0.01 * value, prop


def test_a_property_model_for_other_atoms_is_refused(tiny_models):
    import dataclasses

    from moldiff.jobs.guide import load_property_net
    from moldiff.train.property_module import PropertyModule

    path = tiny_models / "evaluator" / "last.ckpt"
    layout = PropertyModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).layout
    load_property_net(path, "cpu", "gap", layout)
    with pytest.raises(ValueError, match="do not fit together"):
        load_property_net(path, "cpu", "gap", dataclasses.replace(layout, include_charges=False))


@pytest.mark.parametrize("max_steps, max_epochs, interval", [(10, -1, "step"), (-1, 4, "epoch")])
def test_property_learning_rate_anneals_over_the_budget(tiny_models, max_steps, max_epochs, interval):
    """A budget in steps anneals per step (to zero at max_steps), one in epochs per epoch."""
    from types import SimpleNamespace

    from moldiff.train.property_module import PropertyModule

    module = PropertyModule.load_from_checkpoint(tiny_models / "evaluator" / "last.ckpt", map_location="cpu", weights_only=True)
    module._trainer = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs)
    sched = module.configure_optimizers()["lr_scheduler"]
    assert sched["interval"] == interval
    for _ in range(max(max_steps, max_epochs)):
        sched["scheduler"].optimizer.step()
        sched["scheduler"].step()
    assert sched["scheduler"].get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_the_printed_mae_carries_the_propertys_unit():
    """Issue 32: "alpha: MAE 2.854 (evaluator)" gave no unit."""
    from moldiff.data.qm9 import QM9_TARGETS, PROPERTY_UNITS
    from moldiff.jobs.guide import mae_line

    result = {"mae": 2.8543, "scored_by": "evaluator", "n_scored": 9}
    assert mae_line("alpha", result, 10, 10) == "alpha: MAE 2.854 Bohr³ (evaluator) over 9 of 10 molecules; 1 with a non-finite prediction"
    assert mae_line("gap", {**result, "n_scored": 10}, 10, 10) == "gap: MAE 2.854 eV (evaluator) over 10 of 10 molecules"
    assert set(QM9_TARGETS) <= set(PROPERTY_UNITS)
