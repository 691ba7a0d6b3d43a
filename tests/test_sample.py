"""``scripts/sample.py``: all files written, metrics.json equal to the evaluation of samples.sdf,
an interrupted run resumed without losing finished batches, bad options refused up front."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from moldiff.jobs import sample as sample_run
from moldiff.model.diffusion import DiffusionModel

ROOT = Path(__file__).resolve().parents[1]
FAST_EVAL = ["evaluation.reference=null", "evaluation.novelty=null", "evaluation.workers=1"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from moldiff.jobs.train import run_training

    tmp = tmp_path_factory.mktemp("train")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["experiment=tiny", "trainer.max_steps=4", "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp}/ckpt"])
    run_training(cfg, tmp)
    return tmp / "ckpt" / "last.ckpt"


def sample_cfg(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("sample", list(overrides))


def test_sample_writes_everything_and_metrics_match_evaluate(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sample.py"), f"ckpt={tiny_ckpt}", "n=10", "steps=4", "batch_size=4", f"output={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}", *FAST_EVAL],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("samples.sdf", "samples.xyz", "samples.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / ".partial").exists()
    assert (out / "samples.sdf").read_text().count("$$$$") == 10
    # the same numbers as the evaluation job on the written SDF
    e = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), f"input={out / 'samples.sdf'}", "reference=null", "novelty=null", "workers=1",
         f"output={tmp_path / 'eval.json'}", f"hydra.run.dir={tmp_path / 'hydra2'}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert e.returncode == 0, e.stderr[-3000:]
    a, b = json.loads((out / "metrics.json").read_text()), json.loads((tmp_path / "eval.json").read_text())
    a.pop("seconds"), b.pop("seconds")  # run times differ, every metric must not
    assert a == b


def test_interrupted_sampling_resumes_without_losing_batches(tiny_ckpt, tmp_path, monkeypatch):
    overrides = [f"ckpt={tiny_ckpt}", "n=9", "steps=3", "batch_size=3", "evaluation=null"]
    sample_run.run_sampling(sample_cfg(*overrides, f"output={tmp_path / 'ref'}"), tmp_path)
    reference = (tmp_path / "ref" / "samples.xyz").read_text()

    from moldiff.sampling import generate as gen

    real_sample, calls = gen.sample, []

    def dying_sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(gen, "sample", dying_sample)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sample_run.run_sampling(sample_cfg(*overrides, f"output={out}"), tmp_path)
    assert len(list((out / ".partial").glob("batch_*.npz"))) == 2
    assert not (out / "samples.xyz").exists() and not list(out.glob(".*.tmp"))
    calls.clear()
    monkeypatch.setattr(gen, "sample", lambda *a, **k: (calls.append(1), real_sample(*a, **k))[1])
    sample_run.run_sampling(sample_cfg(*overrides, f"output={out}"), tmp_path)
    assert len(calls) == 1  # only the unfinished batch was sampled again
    assert (out / "samples.xyz").read_text() == reference


@pytest.mark.parametrize(
    "override, message",
    [("sampler=ddim", "sampler"), ("steps=0", "steps"), ("n=0", "n must"), ("ckpt=/nonexistent.ckpt", "no checkpoint"),
     ("sizes=[3,4]", "sizes"), ("device=cuda", "CUDA"), ("evaluation.protocols=[edm,foo]", "protocols"),
     ("precision=16", "precision"), ("batch_atoms=0", "batch_atoms"), ("batch_edges=2.5", "batch_edges"),
     ("batch_atoms=abc", "batch_atoms"), ("options={batch_atoms:30}", "top-level batch_atoms")],
)
def test_bad_sample_options_fail_before_any_work(tiny_ckpt, tmp_path, monkeypatch, override, message):
    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(DiffusionModel, "load", lambda *a: pytest.fail("the model was loaded before the config was checked"))
    args = [f"ckpt={tiny_ckpt}", "n=5", *([] if override.startswith("ckpt") else []), override]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sample_run.run_sampling(sample_cfg(*args), tmp_path)


def test_batch_bounds_reach_generate_and_default_is_unchanged(tiny_ckpt, tmp_path, monkeypatch):
    from moldiff.io.writers import write_xyz

    real, seen = sample_run.generate, []
    monkeypatch.setattr(sample_run, "generate", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    base = [f"ckpt={tiny_ckpt}", "n=4", "steps=2", "sizes=[10,11,12,13]", "evaluation=null"]
    sample_run.run_sampling(sample_cfg(*base, f"output={tmp_path / 'plain'}"), tmp_path)
    sample_run.run_sampling(sample_cfg(*base, "batch_atoms=24", "batch_edges=250", f"output={tmp_path / 'bounded'}"), tmp_path)
    assert "batch_atoms" not in seen[0] and "batch_edges" not in seen[0]  # null: the call of before
    assert (seen[1]["batch_atoms"], seen[1]["batch_edges"]) == (24, 250)
    # batches [10, 11], [12], [13] (atoms <= 24): other seeds than one batch of 4, so other molecules,
    # the same ones DiffusionModel.sample gives with the same bounds
    bounded = (tmp_path / "bounded" / "samples.xyz").read_text()
    assert bounded != (tmp_path / "plain" / "samples.xyz").read_text()
    mols = DiffusionModel.load(tiny_ckpt).sample(4, steps=2, sizes=[10, 11, 12, 13], batch_atoms=24, batch_edges=250)
    write_xyz(tmp_path / "py.xyz", mols, [f"sample_{k}" for k in range(4)])
    assert (tmp_path / "py.xyz").read_text() == bounded


def test_a_bad_batch_bound_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), "batch_edges=-3", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "error: batch_edges must be null or a whole number >= 1, got -3"


def test_generate_with_given_sizes_is_reproducible_and_centred(tiny_ckpt):
    from moldiff.sampling.generate import generate

    module = DiffusionModel.load(tiny_ckpt, torch.device("cpu"))
    a = generate(module, 5, steps=3, sizes=[3, 4, 5, 6, 7], batch_size=2, seed=1, progress=False)
    b = generate(module, 5, steps=3, sizes=[3, 4, 5, 6, 7], batch_size=2, seed=1, progress=False)
    assert a.n_atoms.tolist() == [3, 4, 5, 6, 7]
    assert (a.positions == b.positions).all() and (a.numbers == b.numbers).all()
    com = torch.zeros(5, 3, dtype=torch.float64).index_add_(0, torch.from_numpy(a.molecule_index), torch.from_numpy(a.positions).double())
    assert com.abs().max() < 1e-4


def test_sizes_outside_the_training_histogram_are_warned(tiny_ckpt):
    import warnings

    from moldiff.sampling.generate import generate

    module = DiffusionModel.load(tiny_ckpt, torch.device("cpu"))
    largest = max(module.size_histogram)
    with pytest.warns(UserWarning, match=rf"1 of 2 requested atom counts are outside the model's training histogram \({largest + 5}; it has "):
        mols = generate(module, 2, steps=2, sizes=[largest, largest + 5], progress=False)
    assert mols.n_atoms.tolist() == [largest, largest + 5]  # warned, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(module, 2, steps=2, sizes=[largest, largest], progress=False)  # trained sizes: silent
        generate(module, 2, steps=2, progress=False)  # drawn from the histogram: silent


def test_bf16_sampling_follows_the_float32_trajectory(tiny_ckpt):
    """Same seed, same noise: bfloat16 per-edge MLPs move the molecules by far less than their size."""
    from moldiff.sampling.generate import generate

    module = DiffusionModel.load(tiny_ckpt, torch.device("cpu"))
    kw = dict(steps=5, sizes=[6, 9, 12], seed=2, progress=False)
    a = generate(module, 3, **kw)
    b = generate(module, 3, precision="bf16-mixed", **kw)
    assert b.positions.dtype == a.positions.dtype
    assert abs(b.positions - a.positions).max() < 0.05 * abs(a.positions).max()
    with pytest.raises(ValueError, match="precision"):
        generate(module, 3, precision="fp8", **kw)


def test_sample_py_runs_the_recommended_sampler_options_and_they_can_be_undone(tiny_ckpt, tmp_path, monkeypatch):
    """sample.py and DiffusionModel.sample run ancestral sampling with half the injected noise for
    t <= 0.5 (docs/history.md); options={late_noise:1} gives EDM's exact posterior, which
    is what the low-level generate() keeps by default."""
    from moldiff.io.writers import write_xyz
    from moldiff.sampling.generate import generate

    real, seen = sample_run.generate, []
    monkeypatch.setattr(sample_run, "generate", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    base = [f"ckpt={tiny_ckpt}", "n=4", "steps=20", "sizes=[10,11,12,13]", "evaluation=null"]
    sample_run.run_sampling(sample_cfg(*base, f"output={tmp_path / 'default'}"), tmp_path)
    sample_run.run_sampling(sample_cfg(*base, "options={late_noise:1}", f"output={tmp_path / 'exact'}"), tmp_path)
    assert (seen[0]["late_noise"], seen[0]["late_t"]) == (0.5, 0.5) and seen[1]["late_noise"] == 1
    names = [f"sample_{k}" for k in range(4)]
    model = DiffusionModel.load(tiny_ckpt)
    write_xyz(tmp_path / "py.xyz", model.sample(4, steps=20, sizes=[10, 11, 12, 13]), names)
    write_xyz(tmp_path / "low.xyz", generate(model, 4, steps=20, sizes=[10, 11, 12, 13], progress=False), names)
    default, exact = (tmp_path / "default" / "samples.xyz").read_text(), (tmp_path / "exact" / "samples.xyz").read_text()
    assert (tmp_path / "py.xyz").read_text() == default != exact == (tmp_path / "low.xyz").read_text()


def test_samples_sdf_records_carry_perceived_bonds_and_samples_valid_opens_in_rdkit(tmp_path):
    """Issue 32: 28 % of samples.sdf did not open in RDKit (EDM's distance bonds, no charges).
    Each record now says its validity and stability under both protocols, agreeing with
    metrics.json, and samples_valid.sdf holds exactly the corrected-valid molecules, each loading
    with RDKit's default settings."""
    from rdkit import Chem

    result = sample_run.run_sampling(sample_cfg("n=8", "steps=60", "seed=0", f"output={tmp_path}", *FAST_EVAL), tmp_path)
    n = result["n_molecules"]
    valid = list(Chem.SDMolSupplier(str(tmp_path / "samples_valid.sdf")))
    assert None not in valid
    assert len(valid) == round(result["corrected"]["validity"] * n) > 0
    records = list(Chem.SDMolSupplier(str(tmp_path / "samples.sdf"), sanitize=False))
    assert len(records) == n == 8
    props = [r.GetPropsAsDict() for r in records]
    for proto in ("edm", "corrected"):
        assert sum(p[f"{proto}_valid"] for p in props) == round(result[proto]["validity"] * n)
        assert sum(p[f"{proto}_stable"] for p in props) == round(result[proto]["molecule_stability"] * n)
    assert [p["bonds"] for p in props] == ["perceived" if p["corrected_valid"] else "edm" for p in props]
    for k, p in enumerate(props):  # a perceived record reads back as it was written, charges included
        if p["bonds"] == "perceived":
            assert Chem.MolFromMolBlock(Chem.MolToMolBlock(records[k])) is not None
    assert [m.GetProp("_Name") for m in valid] == [r.GetProp("_Name") for r, p in zip(records, props) if p["corrected_valid"]]


@pytest.mark.parametrize("override, message", [
    ("evaluation.posebusters=2", "error: posebusters=2 needs posebusters, which is not installed: `pip install posebusters` "
                                 "(or `pip install moldiff[extra]`)"),
    ("evaluation.xtb=3", "error: xtb=3 needs tblite, which is not installed: `pip install tblite` (or `pip install moldiff[extra]`)"),
])
def test_a_missing_optional_package_fails_before_sampling(tmp_path, monkeypatch, capsys, override, message):
    """Issue 32: without PoseBusters, evaluation.posebusters=2 sampled first, then died in a
    33-line traceback with exit 1 and no metrics.json."""
    import importlib.util

    from moldiff.jobs.cli import user_errors

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("posebusters", "tblite") else real(name, *a))
    monkeypatch.setattr(sample_run, "generate", lambda *a, **k: pytest.fail("sampled before checking the optional package"))
    with pytest.raises(SystemExit) as stop, user_errors():
        sample_run.run_sampling(sample_cfg("n=1", "steps=1", override, f"output={tmp_path / 'out'}"), tmp_path)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]


def test_the_sampling_job_says_what_it_samples_and_roughly_how_long():
    """Issue 32: long jobs say what they are doing and roughly how long it takes."""
    assert sample_run.announce(sample_cfg("n=1000"), 1000, 0, "cpu") == "sampling 1000 molecules (ancestral, 300 steps, cpu): ~5 min on 2 CPU cores"
    assert sample_run.announce(sample_cfg("n=20", "sampler=ode_dpm2", "steps=50"), 20, 0, "cpu") == \
        "sampling 20 molecules (ode_dpm2, 50 steps, cpu): ~2 s on 2 CPU cores"
    assert sample_run.announce(sample_cfg("ckpt=my.ckpt"), 1000, 1, "cpu") == "sampling 1000 molecules (ancestral, 300 steps, cpu), 1 batches already done"
