"""Tidy runs, as a user sees them from the shell: a rerun replaces ``last.ckpt`` instead of piling
up ``last-vN.ckpt`` copies, ``output=`` writes only where it says, and Lightning's banner and
messages print once."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_reruns_keep_one_checkpoint_and_print_the_banner_once(tmp_path):
    cmd = [str(ROOT / "scripts" / "train.py"), "experiment=tiny", "trainer.max_steps=2", "logs=[]", f"hydra.run.dir={tmp_path / 'run'}"]
    first = _run(cmd, tmp_path)
    assert first.count("GPU available") == 1, first
    assert "`weights_only` was not set" not in first
    _run(cmd, tmp_path)  # finished: resumes, trains nothing, saves again
    _run([*cmd[:2], "trainer.max_steps=3", *cmd[3:]], tmp_path)  # continues one step
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]


def test_output_writes_only_where_it_says(tmp_path, tiny_diffusion):
    _run([str(ROOT / "scripts" / "sample.py"), f"ckpt={tiny_diffusion}", "n=2", "steps=2", "evaluation=null", "output=mine"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no outputs/sample/<time>/ beside it
    assert (tmp_path / "mine" / "samples.sdf").is_file()


@pytest.mark.parametrize("script,override", [
    ("sample", "ckpt=/nonexistent.ckpt"), ("train", "ema_decay=2"), ("evaluate", "input=/nonexistent.sdf"),
    ("likelihood", "method=foo"), ("guide", "property=foo"), ("refine_bridge", "steps=0"), ("train_property", "role=foo"),
])
def test_every_script_answers_a_user_error_with_one_line(script, override, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), override, f"hydra.run.dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]


def test_training_on_an_unbuilt_geom_cache_names_its_builder(tmp_path):
    import os

    env = {**os.environ, "MOLDIFF_DATA_DIR": str(tmp_path / "data")}  # where nothing was built
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "dataset=geom_1k", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No such file" not in done.stderr, done.stderr[-2000:]
    assert errors[0] == (f"error: dataset=geom_1k: no train cache {tmp_path / 'data'}/geom_1k/cache/geom_1k_k5_train.npz; "
                         "build it first: python scripts/build_conformers.py")


def test_sampling_never_writes_a_non_finite_molecule(tiny_diffusion, tmp_path, monkeypatch):
    """A molecule the model ends non-finite (it happens far outside the training sizes) is left
    out and counted, never written as -nan."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from moldiff.jobs import sample as job

    real = job.generate

    def with_a_nan(*args, **kwargs):
        mols = real(*args, **kwargs)
        mols.positions[mols.offsets[1]:mols.offsets[2]] = np.nan  # molecule 1
        return mols

    monkeypatch.setattr(job, "generate", with_a_nan)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", [f"ckpt={tiny_diffusion}", "n=3", "steps=2", f"output={tmp_path}", "evaluation.reference=null",
                                 "evaluation.novelty=null", "evaluation.workers=1"])
    result = job.run_sampling(cfg, tmp_path)
    sdf = (tmp_path / "samples.sdf").read_text()
    assert "nan" not in sdf.lower() and sdf.count("$$$$") == 2
    assert "sample_0" in sdf and "sample_1" not in sdf and "sample_2" in sdf
    assert result["left_out"]["n"] == 1 and result["left_out"]["indices"] == [1]
    assert json.loads((tmp_path / "metrics.json").read_text())["left_out"]["n"] == 1


def test_evaluate_output_writes_only_that_file(tmp_path, qm9_test):
    from moldiff.io.writers import write_xyz

    write_xyz(tmp_path / "in.xyz", qm9_test.subset(range(3)), ["a", "b", "c"])
    _run([str(ROOT / "scripts" / "evaluate.py"), "input=in.xyz", "output=m.json", "reference=null", "novelty=null", "workers=1"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz", "m.json"]
