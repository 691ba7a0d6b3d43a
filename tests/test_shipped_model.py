"""The QM9 checkpoint inside the package: present, small, self-describing, and sampled by
``scripts/sample.py`` with no arguments but n (offline)."""

import subprocess
import sys
from pathlib import Path

import torch

from moldiff.model.checkpoint import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_checkpoint_is_small_and_describes_its_training():
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 8e6
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["name"] == "egnn" and hp["dataset"] == "qm9" and hp["features"]["vocabulary"] == "qm9"
    assert "optimizer_states" not in ckpt
    record = ckpt["moldiff_record"]
    assert record and sum(r["seconds"] for r in record) > 3600 and record[-1]["last_step"] == ckpt["global_step"]


def test_sample_py_uses_the_shipped_model_by_default(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sample.py"), "n=6", "steps=5", f"output={tmp_path}", f"hydra.run.dir={tmp_path}/hydra",
         "evaluation.reference=null", "evaluation.novelty=null", "evaluation.workers=1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("samples.sdf", "samples.xyz", "samples.png", "metrics.json"):
        assert (tmp_path / name).is_file()
