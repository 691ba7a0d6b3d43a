"""Tidy runs, as a user sees them from the shell: a rerun replaces ``last.ckpt`` instead of piling
up ``last-vN.ckpt`` copies, ``output=`` writes only where it says, and Lightning's banner and
messages print once."""

import subprocess
import sys
from pathlib import Path

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
