"""A checkpoint someone shares is data: loading it through any entry point (sample, resume, warm
start, export) must refuse a pickled payload before it can run, not after."""

import pickle
from pathlib import Path

import pytest
import torch

from moldiff.model.diffusion import DiffusionModel
from moldiff.jobs import train as train_run
from moldiff.train.export import export_checkpoint

from test_train import tiny_cfg


class Payload:
    """Unpickling this calls Path.touch(marker): the stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def poisoned(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": Payload(marker)}, path)
    return path, marker


def test_sampling_refuses_a_pickled_payload(poisoned):
    path, marker = poisoned
    with pytest.raises(pickle.UnpicklingError):
        DiffusionModel.load(path, torch.device("cpu"))
    assert not marker.exists()


def test_export_refuses_a_pickled_payload(poisoned, tmp_path):
    path, marker = poisoned
    with pytest.raises(pickle.UnpicklingError):
        export_checkpoint(path, tmp_path / "small.ckpt")
    assert not marker.exists() and not (tmp_path / "small.ckpt").exists()


@pytest.mark.parametrize("how", ["checkpoint.resume", "init_from"])
def test_training_refuses_a_pickled_payload(poisoned, tmp_path, how):
    path, marker = poisoned
    with pytest.raises(pickle.UnpicklingError):
        train_run.run_training(tiny_cfg(tmp_path / "run", "trainer.max_steps=1", f"{how}={path}"), tmp_path / "run")
    assert not marker.exists()


def _script_error(tmp_path, ckpt) -> list[str]:
    """stderr lines of ``scripts/sample.py ckpt=<ckpt>``, which must exit 2 before sampling."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "scripts" / "sample.py"), f"ckpt={ckpt}", "n=1", f"output={tmp_path / 'out'}",
                        f"hydra.run.dir={tmp_path / 'hydra'}"], capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    return p.stderr.strip().splitlines()


def test_unreadable_checkpoints_are_one_line_each(poisoned, tmp_path):
    """Issue 32: a file that is not a checkpoint (README.md) gave 20 lines saying it "holds more
    than weights", a truncated one 22 lines, a crafted one torch's whole message, which suggests
    weights_only=False. Each is one line and exit 2; the crafted one's names the file and says that
    nothing in it ran."""
    from moldiff.model.checkpoint import SHIPPED

    readme = Path(__file__).resolve().parents[1] / "README.md"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(SHIPPED.read_bytes()[:100_000])
    path, marker = poisoned
    assert _script_error(tmp_path, readme) == [f"error: {readme} is not a checkpoint (not the zip archive torch.save writes); nothing in it ran"]
    assert _script_error(tmp_path, truncated) == [
        f"error: {truncated} is truncated or corrupt (a zip archive without its directory; an interrupted copy?)"]
    crafted = _script_error(tmp_path, path)
    assert crafted == [f"error: {path}: refused: it holds pickled code (getattr), not only weights and plain configs; nothing in it ran"]
    assert not marker.exists()
