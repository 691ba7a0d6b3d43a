"""The training pipeline on a tiny config: exact resume after a crash mid-epoch, DDP with two
CPU processes, clear config errors before any work, and the data loader's batches."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from moldiff.data.loader import EpochBatchSampler, MoleculeDataset
from moldiff.jobs import train as train_run
from moldiff.state import MolState

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, *overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["experiment=tiny", "trainer.enable_progress_bar=false", "logs=[]", f"checkpoint.dir={tmp_path}/ckpt", *overrides])
    return cfg


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Crash(pl.Callback):
    """Stands in for a kill: dies after the given step's update, mid-epoch, with no checkpoint of it."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


def test_resume_mid_epoch_gives_the_same_parameters(tmp_path, monkeypatch):
    # 64 molecules / batch 8 = 8 steps per epoch; checkpoints every 2 steps; 13 steps in all
    full = train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "a")

    real_trainer = pl.Trainer

    def crashing_trainer(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Crash(11)]
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(train_run.pl, "Trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="killed"):
        train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "b")
    monkeypatch.setattr(train_run.pl, "Trainer", real_trainer)
    ckpt = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10  # the last checkpoint before the crash, 2 batches into epoch 1
    assert not list((tmp_path / "b" / "ckpt").glob("*.tmp"))
    resumed = train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "b")
    a, b = params(full), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class StepClock(pl.Callback):
    """A fake clock for Lightning's timer: one minute per training step, so a max_time stop lands
    on a known step without a timed test."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.now += 60.0


def test_resume_after_steps_and_time_limited_stops_is_exact(tmp_path, monkeypatch):
    """Legs that end by max_steps and by max_time, mid-epoch, continue bit for bit as one run.
    8 steps per epoch: legs 1 and 2 stop by max_time at steps 3 and 9 (leg 2 has 6 minutes of its
    own, not counting leg 1's 3), leg 3 by max_steps at 11, leg 4 finishes at 13."""
    full = train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "a")

    clock = StepClock()
    real_trainer = pl.Trainer

    def clocked_trainer(*args, **kwargs):
        kwargs["callbacks"] = [clock, *kwargs.get("callbacks", [])]
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(train_run.pl, "Trainer", clocked_trainer)
    import pytorch_lightning.callbacks.timer as timer_module

    monkeypatch.setattr(timer_module, "time", clock)
    ckpt = tmp_path / "b" / "ckpt" / "last.ckpt"
    legs = [("trainer.max_time=00:00:03:00",), ("trainer.max_time=00:00:06:00",), ("trainer.max_steps=11",), ()]
    for overrides, (step, epoch) in zip(legs, [(3, 0), (9, 1), (11, 1), (13, 1)]):
        resumed = train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_epochs=-1", "trainer.max_steps=13", *overrides), tmp_path / "b")
        saved = torch.load(ckpt, weights_only=True)
        assert (saved["global_step"], saved["epoch"]) == (step, epoch)
    a, b = params(full), params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Terminate(pl.Callback):
    """`kill <pid>` in the middle of a step: the run must stop cleanly after it and save it."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step - 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_cleanly_and_resumes_exactly(tmp_path, monkeypatch):
    full = train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "a")
    real_trainer = pl.Trainer
    monkeypatch.setattr(train_run.pl, "Trainer", lambda *a, **k: real_trainer(*a, **{**k, "callbacks": [Terminate(5), *k.get("callbacks", [])]}))
    with pytest.raises(SystemExit):
        train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "b")
    monkeypatch.setattr(train_run.pl, "Trainer", real_trainer)
    assert torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 5  # not the periodic step 4
    resumed = train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=13", "trainer.max_epochs=-1"), tmp_path / "b")
    a, b = params(full), params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


class InitialWeights(pl.Callback):
    def on_fit_start(self, trainer, module):
        self.weights = params(module)


def test_bf16_mixed_training_keeps_float32_state_and_tracks_float32(tmp_path, monkeypatch):
    """trainer.precision=bf16-mixed: parameters, EMA and optimizer state stay float32, and a few
    steps from the same start move the weights the same way as float32 training does."""
    init = InitialWeights()
    real_trainer = pl.Trainer
    monkeypatch.setattr(train_run.pl, "Trainer", lambda *a, **k: real_trainer(*a, **{**k, "callbacks": [init, *k.get("callbacks", [])]}))
    moved = {}
    for precision in ("32", "bf16-mixed"):
        out = tmp_path / precision
        module = train_run.run_training(tiny_cfg(out, "trainer.max_steps=6", f"trainer.precision={precision}"), out)
        end = params(module)
        moved[precision] = torch.cat([(end[k] - init.weights[k]).flatten() for k in end if k.startswith("net.")])
    assert all(v.dtype == torch.float32 for v in module.state_dict().values() if v.is_floating_point())
    opt = torch.load(tmp_path / "bf16-mixed" / "ckpt" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.values())
    cos = torch.nn.functional.cosine_similarity(moved["32"], moved["bf16-mixed"], dim=0)
    assert cos > 0.95, cos  # Adam moves every weight by ~lr per step: the direction is what bf16 could get wrong


def test_lr_decay_reaches_its_final_rate(tmp_path):
    train_run.run_training(tiny_cfg(tmp_path, "trainer.max_steps=6", "optim.decay.kind=cosine", "optim.decay.steps=4", "optim.decay.final=0.2"), tmp_path)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    lr = float(ckpt["hyper_parameters"]["optim"]["lr"])
    assert abs(ckpt["optimizer_states"][0]["param_groups"][0]["lr"] - 0.2 * lr) < 1e-12


def test_training_record_and_warm_start(tmp_path):
    train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=3"), tmp_path / "a")
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    record = torch.load(last, weights_only=True)["moldiff_record"]
    assert record[-1]["last_step"] == 3 and record[-1]["device"].startswith("cpu")
    from moldiff.train.export import export_checkpoint

    small = tmp_path / "small.ckpt"
    export_checkpoint(last, small)
    assert "optimizer_states" not in torch.load(small, weights_only=True)
    train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=1", f"init_from={small}"), tmp_path / "b")
    rec2 = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)["moldiff_record"]
    assert len(rec2) == 2 and rec2[0] == record[-1]
    with pytest.raises(ValueError, match="model config"):
        train_run.run_training(tiny_cfg(tmp_path / "c", "trainer.max_steps=1", f"init_from={last}", "model.hidden=32"), tmp_path / "c")


def test_compact_export_loads_and_warm_starts_like_the_full_one(tmp_path):
    """The compact export (EMA only, matrices in float16) is a quarter of the full one, loads as float32 with the
    network set to the EMA weights, predicts the same epsilon to float16 rounding, and warm-starts."""
    from moldiff.model.diffusion import DiffusionModel
    from moldiff.train.export import export_checkpoint

    train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=3"), tmp_path / "a")
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    export_checkpoint(last, tmp_path / "full.ckpt")
    export_checkpoint(last, tmp_path / "compact.ckpt", compact=True)
    raw = torch.load(tmp_path / "compact.ckpt", weights_only=True)
    assert not any(k.startswith("net.") for k in raw["state_dict"])
    # matrices in float16, vectors (biases) in float32
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point() and v.dim() >= 2} == {torch.float16}
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point() and v.dim() < 2} == {torch.float32}
    assert (tmp_path / "compact.ckpt").stat().st_size < 0.3 * (tmp_path / "full.ckpt").stat().st_size + 20_000
    full, compact = DiffusionModel.load(tmp_path / "full.ckpt"), DiffusionModel.load(tmp_path / "compact.ckpt")
    for k, v in full.ema.module.state_dict().items():
        c = compact.ema.module.state_dict()[k]
        assert c.dtype == v.dtype and torch.equal(c, v.half().float() if v.is_floating_point() and v.dim() >= 2 else v), k
        assert torch.equal(compact.net.state_dict()[k], c), k
    torch.manual_seed(0)
    n = torch.tensor([5, 7])
    batch = torch.repeat_interleave(torch.arange(2), n)
    x = torch.randn(12, 3)
    x = x - torch.zeros(2, 3).index_add_(0, batch, x)[batch] / n[batch, None]
    h = torch.randn(12, full.layout.dim)
    t = torch.full((2,), 0.3)
    state = MolState(batch, 2, pos=x, atom_type=h)
    ef = full.eps_fn()(state, t)["pos"]
    ec = compact.eps_fn()(state, t)["pos"]
    assert (ef - ec).abs().max() < 2e-3 * ef.abs().max()
    train_run.run_training(tiny_cfg(tmp_path / "b", "trainer.max_steps=1", f"init_from={tmp_path / 'compact.ckpt'}"), tmp_path / "b")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=transformer", "unknown model name"),
        ("model.depth=3", "depth"),
        ("noise.schedule=sigmoid", "noise.schedule"),
        ("loss.weighting=l1", "weighting"),
        ("evaluate.sampler=euler", "evaluate.sampler"),
        ("optim.lr=-1", "optim.lr"),
        ("batch_size=0", "batch_size"),
        ("trainer.accelerator=tpu9", "trainer"),
        ("dataset.features.vocabulary=zinc", "vocabulary"),
        ("optim.decay.kind=step", "decay"),
        ("loss.low_t.fraction=2", "low_t"),
        ("shadow_ema=[1.5]", "shadow_ema"),
    ],
)
def test_bad_config_values_fail_before_any_work(tmp_path, monkeypatch, override, message):
    def no_data(*a, **k):
        raise AssertionError("data were loaded before the config was checked")

    monkeypatch.setattr(train_run, "load_split", no_data)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        if override.startswith("model.depth"):
            cfg = compose("train", ["experiment=tiny", "+" + override])
        else:
            cfg = compose("train", ["experiment=tiny", override])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_run.run_training(cfg, tmp_path)


def test_unknown_config_key_is_rejected_by_the_cli(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=tiny", "trainer.max_epocs=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert p.returncode != 0 and "max_epocs" in p.stderr


def test_ddp_with_two_cpu_processes(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=tiny", "trainer=ddp_cpu", "trainer.max_steps=3",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["moldiff_record"][-1]["world_size"] == 2


class Snapshot(pl.Callback):
    def __init__(self, batch_idx):
        self.batch_idx, self.before, self.after = batch_idx, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.before = params(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.after = params(module)


def test_a_nonfinite_loss_leaves_weights_ema_and_optimizer_untouched(tmp_path, monkeypatch):
    from moldiff.train.module import DiffusionModule

    real_step = DiffusionModule.training_step

    def poisoned(self, batch, batch_idx):
        if batch_idx == 2:
            batch.x = batch.x * float("nan")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(DiffusionModule, "training_step", poisoned)
    snap = Snapshot(2)
    real_trainer = pl.Trainer
    monkeypatch.setattr(train_run.pl, "Trainer", lambda *a, **k: real_trainer(*a, **{**k, "callbacks": [snap, *k.get("callbacks", [])]}))
    module = train_run.run_training(tiny_cfg(tmp_path, "trainer.max_steps=5"), tmp_path)
    assert module.skipped_batches == 1
    assert all(torch.equal(snap.before[k], snap.after[k]) for k in snap.before)  # network and EMA
    assert all(torch.isfinite(v).all() for v in params(module).values())


def test_ddp_ranks_skip_a_nonfinite_loss_together(tmp_path):
    """One rank's non-finite loss: every rank skips that update (no hang), and the replicas stay equal."""
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_nonfinite_run.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(tmp_path / f"skipped_rank{r}.txt").read_text() for r in (0, 1)] == ["1", "1"]
    a, b = (torch.load(tmp_path / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_batches_cover_the_epoch_and_are_reproducible():
    from moldiff.data.elements import QM9_VOCAB
    from moldiff.data.features import FeatureLayout
    from moldiff.data.molecules import MoleculeSet

    mols = MoleculeSet.from_list([([6] + [1] * k, np.random.default_rng(k).normal(size=(k + 1, 3))) for k in range(20)])
    ds = MoleculeDataset(mols, FeatureLayout(QM9_VOCAB))
    s = EpochBatchSampler(len(ds), 6, seed=3)
    first = [b.tolist() for b in s]
    assert len(first) == 3 and len({i for b in first for i in b}) == 18
    assert first == [b.tolist() for b in s]  # same epoch, same order
    s.set_epoch(1)
    assert first != [b.tolist() for b in s]
    s.set_epoch(0)
    s.skip = 2
    assert [b.tolist() for b in s] == first[2:]
    batch = ds[np.array(first[0])]
    assert batch.n_mol == 6 and batch.x.shape[0] == batch.h.shape[0] == len(batch.batch)
    com = torch.zeros(6, 3).index_add_(0, batch.batch, batch.x)
    assert com.abs().max() < 1e-5  # centred molecules
    with pytest.raises(ValueError, match="not in the qm9 vocabulary"):
        MoleculeDataset(MoleculeSet.from_list([([16, 1], np.zeros((2, 3)))]), FeatureLayout(QM9_VOCAB))


def test_training_path_imports_no_rdkit_or_ase(tmp_path):
    """The GPU machines have neither: training must not import them (evaluation imports lazily)."""
    code = (
        "import sys\n"
        "for m in ('rdkit', 'ase'): sys.modules[m] = None\n"
        "sys.argv = ['train.py', 'experiment=tiny', 'trainer.max_steps=2', 'trainer.enable_progress_bar=false', "
        f"'evaluate.every_n_epochs=1', 'evaluate.n=2', 'evaluate.steps=2', 'hydra.run.dir={tmp_path}']\n"
        f"import runpy; runpy.run_path({str(ROOT / 'scripts' / 'train.py')!r}, run_name='__main__')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_e3nn_network_trains_through_the_same_pipeline(tmp_path):
    module = train_run.run_training(tiny_cfg(tmp_path, "model=e3nn", "~model.hidden", "model.layers=1", "trainer.max_steps=2"), tmp_path)
    assert type(module.net).__name__ == "E3NNNet"
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_shadow_ema_is_exact_across_a_resume_and_exports(tmp_path):
    """Extra EMA decays ride along without changing training: decay 0 tracks the raw weights, and a
    run stopped and resumed keeps its extra averages bit for bit."""
    from moldiff.train.export import export_checkpoint

    shadow = "shadow_ema=[0.0,0.5]"
    train_run.run_training(tiny_cfg(tmp_path / "a", "trainer.max_steps=6", "trainer.max_epochs=-1", shadow), tmp_path / "a")
    plain = train_run.run_training(tiny_cfg(tmp_path / "p", "trainer.max_steps=6", "trainer.max_epochs=-1"), tmp_path / "p")
    for leg in (3, 6):
        resumed = train_run.run_training(tiny_cfg(tmp_path / "b", f"trainer.max_steps={leg}", "trainer.max_epochs=-1", shadow), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)
    for d in ("0.0", "0.5"):
        for k, v in a["callbacks"]["ShadowEMA"]["averages"][d].items():
            assert torch.equal(v, b["callbacks"]["ShadowEMA"]["averages"][d][k]), (d, k)
    p = params(plain)
    for k, v in params(resumed).items():  # the training itself is untouched
        assert torch.equal(v, p[k]), k
    export_checkpoint(tmp_path / "a" / "ckpt" / "last.ckpt", tmp_path / "raw.ckpt", shadow_ema=0.0)
    small = torch.load(tmp_path / "raw.ckpt", weights_only=True)
    nets = {k[len("net."):]: v for k, v in small["state_dict"].items() if k.startswith("net.")}
    for k, v in nets.items():
        assert torch.equal(small["state_dict"][f"ema.module.{k}"], v), k
    assert small["hyper_parameters"]["ema_decay"] == 0.0
    with pytest.raises(ValueError, match="no extra EMA at decay 0.9"):
        export_checkpoint(tmp_path / "a" / "ckpt" / "last.ckpt", tmp_path / "x.ckpt", shadow_ema=0.9)


def test_atom_bounded_batches_resume_mid_epoch_exactly(tmp_path, monkeypatch):
    """batch_atoms (issue 17): batches of whole molecules up to 150 atoms; a crash mid-epoch and a
    resume end with the same parameters as an uninterrupted run."""
    args = ("batch_atoms=150", "trainer.max_steps=13", "trainer.max_epochs=-1")
    full = train_run.run_training(tiny_cfg(tmp_path / "a", *args), tmp_path / "a")
    real_trainer = pl.Trainer

    def crashing_trainer(*a, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Crash(11)]
        return real_trainer(*a, **kwargs)

    monkeypatch.setattr(train_run.pl, "Trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="killed"):
        train_run.run_training(tiny_cfg(tmp_path / "b", *args), tmp_path / "b")
    monkeypatch.setattr(train_run.pl, "Trainer", real_trainer)
    loader = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader["max_atoms"] == 150 and 0 < loader["trained"] < loader["batches"]  # saved mid-epoch
    resumed = train_run.run_training(tiny_cfg(tmp_path / "b", *args), tmp_path / "b")
    a, b = params(full), params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_training_set_smaller_than_one_batch_is_an_error(tmp_path):
    """Issue 32: a training set smaller than batch_size trained nothing and exited 0."""
    from moldiff.jobs.train import check_one_batch

    with pytest.raises(ValueError) as err:
        train_run.run_training(tiny_cfg(tmp_path, "dataset.train_max=5", "batch_size=8"), tmp_path)
    assert str(err.value) == "dataset.train: 5 usable molecules, fewer than batch_size=8: no full batch to train on; set batch_size=5 or less"
    with pytest.raises(ValueError, match=r"fewer than batch_size=8 per process \(2 processes\): .* set batch_size=6 or less"):
        check_one_batch(tiny_cfg(tmp_path, "trainer=ddp_cpu", "batch_size=8"), 12)
    check_one_batch(tiny_cfg(tmp_path, "batch_size=8"), 8)
    check_one_batch(tiny_cfg(tmp_path, "batch_size=8", "batch_atoms=100"), 3)  # bounded batches take every molecule


def test_training_output_has_no_advertisement_or_known_harmless_warnings(tmp_path):
    """Issue 32: training printed Lightning's litlogger advertisement, torch's LeafSpec deprecation
    and the model summary's bf16 warning."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=tiny", "trainer.max_steps=2",
                        "trainer.precision=bf16-mixed", "logs=[]", f"checkpoint.dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert "Trainable params" in out  # Lightning still speaks
    for noise in ("💡", "litlogger", "LeafSpec", "not supported by the model summary"):
        assert noise not in out, noise
