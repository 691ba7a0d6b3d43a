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
