"""Composed Hydra configs: the shared blocks (trainer/base.yaml, common/*.yaml) reach every job config
with the values the job files used to spell out themselves, and command-line overrides keep working."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
JOBS = ["evaluate", "guide", "likelihood", "refine_bridge", "sample", "train", "train_property"]
TRAINED = ["train", "train_property", "refine_bridge"]  # the jobs with a `trainer` group
# trainer option: (accelerator, devices, strategy, precision)
TRAINERS = {
    "cpu": ("cpu", 1, "auto", 32),
    "ddp_cpu": ("cpu", 2, "ddp", 32),
    "gpu": ("gpu", 1, "auto", 32),
    "gpu_amp": ("gpu", 1, "auto", "bf16-mixed"),
}
EVALUATION_KEYS = {"vocabulary", "protocols", "reference", "reference_max", "novelty", "workers", "posebusters", "posebusters_timeout", "xtb", "revisited_xtb"}


def _compose(name, overrides=()):
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        return compose(name, list(overrides))


@pytest.mark.parametrize("name", JOBS)
def test_every_job_config_composes(name):
    cfg = _compose(name)
    # only evaluate's `input` is left for the user to give
    assert set(OmegaConf.missing_keys(cfg)) == ({"input"} if name == "evaluate" else set())


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("name", TRAINED)
def test_trainer_options(name, trainer):
    t = _compose(name, [f"trainer={trainer}"]).trainer
    assert (t.accelerator, t.devices, t.strategy, t.precision) == TRAINERS[trainer]
    assert not OmegaConf.missing_keys(t)
    assert t.num_nodes == 1 and t.log_every_n_steps == 50 and t.enable_progress_bar is None
    if name == "refine_bridge":  # its own settings still win over the trainer option's
        assert t.gradient_clip_val is None and t.max_epochs == -1
    else:
        assert t.gradient_clip_val == 1.0 and t.max_epochs == 3000


def test_trainer_overrides_and_experiments():
    t = _compose("train", ["trainer=gpu_amp", "trainer.precision=16-mixed", "trainer.devices=4"]).trainer
    assert (t.accelerator, t.precision, t.devices) == ("gpu", "16-mixed", 4)
    cpu = _compose("train", ["experiment=qm9_cpu"])
    cond = _compose("train", ["experiment=qm9_cond", "trainer=gpu"])
    assert cpu.trainer.max_time == cond.trainer.max_time == "00:02:00:00"
    assert cond.trainer.accelerator == "gpu"  # trainer= on the command line beats the experiment's choice
    assert OmegaConf.to_container(cond.evaluate) == OmegaConf.to_container(cpu.evaluate)
    assert (cond.evaluate.every_n_epochs, cond.evaluate.steps) == (2, 50)
    assert cond.name == "qm9_cond_alpha" and cond.dataset.train == "qm9:train_second_half"
    assert _compose("train", ["experiment=tiny"]).trainer.max_epochs == 2


def test_evaluation_block_shared_by_sample_guide_and_evaluate():
    evaluate = _compose("evaluate", ["input=qm9:test"])
    sample = _compose("sample").evaluation
    guide = _compose("guide").evaluation
    assert set(sample) == set(guide) == EVALUATION_KEYS
    assert {k: sample[k] for k in EVALUATION_KEYS} == {k: evaluate[k] for k in EVALUATION_KEYS}
    assert sample.reference == sample.novelty == "qm9:train" and list(sample.protocols) == ["edm", "corrected"]
    assert guide.reference is None and guide.novelty is None and guide.reference_max == 10000


@pytest.mark.parametrize("name", ["sample", "guide"])
def test_evaluation_overrides(name):
    assert _compose(name, ["evaluation=null"]).evaluation is None
    ev = _compose(name, ["evaluation.protocols=[edm]", "evaluation.workers=1", "evaluation.reference=qm9:valid"]).evaluation
    assert (list(ev.protocols), ev.workers, ev.reference) == (["edm"], 1, "qm9:valid")


def test_checkpoint_block():
    for name in TRAINED:
        ck = _compose(name).checkpoint
        assert ck.dir is None and ck.resume == "auto"
        assert ck.every_n_train_steps == (100 if name == "refine_bridge" else 500)
    assert _compose("train", ["checkpoint.dir=/tmp/x", "checkpoint.resume=null"]).checkpoint.resume is None


def test_an_unknown_plus_key_is_refused_like_a_typo(tmp_path):
    """Issue 32: Hydra answers stpes=10 with "use +stpes=10 to append"; doing so ran with exit 0
    and ignored the key. It is one line and exit status 2, before any work."""
    import subprocess
    import sys

    from moldiff.jobs.cli import refuse_additions

    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), "+stpes=10", "n=1", f"output={tmp_path / 'out'}",
                        f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        "error: stpes: unknown key; '+stpes=...' would add a key no job reads, so it is refused like a typo "
        "(the keys are in configs/sample.yaml; '+' adds only under options, hydra)"]
    assert not (tmp_path / "out").exists()
    refuse_additions(["+options.snr=0.1", "+options={snr:0.1}", "++steps=10", "steps=10"])  # the open dict; not additions
    with pytest.raises(ValueError, match="^evaluation.foo: unknown key"):
        refuse_additions(["+evaluation.foo=1"])
