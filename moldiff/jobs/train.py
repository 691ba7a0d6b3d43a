"""The training job behind ``scripts/train.py``: check the config, build data, model and trainer,
fit (resuming from ``last.ckpt`` in the run folder when there is one)."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from moldiff.data.loader import EpochBatchSampler, MoleculeDataset, ResumableLoader, checked_batch_bounds
from moldiff.data.paths import data_root
from moldiff.data.report import InputReport
from moldiff.data.sources import load_source
from moldiff.model import build
from moldiff.model.build import plain as _plain
from moldiff.model.checkpoint import SHIPPED, load_file, read_checkpoint
from moldiff.nn.context import Context
from moldiff.nn.cpu_tuning import tune_once
from moldiff.sampling.samplers import SAMPLERS
from moldiff.train.callbacks import AtomicCheckpointIO, LegTimer, SampleAndEvaluate, SaveAtEnd, ShadowEMA
from moldiff.train.bond_module import BondDiffusionModule, field_loss
from moldiff.train.quiet import quiet_third_party
from moldiff.train.module import DiffusionModule, TrainingRecord, lr_factor
from moldiff.data.elements import vocabulary
from moldiff.data.state_dataset import BOND_CLASSES, StateDataset
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.nn.bond_egnn import add_fragment_input, add_self_conditioning

BOND_NETWORKS = ("bond_egnn",)


def check_bond_model(model: dict, noise: dict, loss_cfg: dict, features: dict) -> None:
    """Build the bond model once on uniform class frequencies: a bad key or value fails here."""
    vocab = vocabulary(features["vocabulary"])
    uniform = lambda k: [1.0] * k  # noqa: E731
    marginals = {"atom_type": uniform(len(vocab)), "charge": uniform(len(features.get("charges", (-1, 0, 1)))),
                 "bond": uniform(len(BOND_CLASSES))}
    try:
        model_obj = BondDiffusionModel(model, noise, features, {1: 1}, marginals, ema_decay=0.0)
    except TypeError as e:  # an unknown keyword of the network or process
        raise ValueError(f"bond model: {e}") from None
    field_loss(loss_cfg, model_obj)


def load_state_split(spec: str, features: dict, limit: int | None = None, seed: int = 0) -> StateDataset:
    """A split with bonds and formal charges (perceived once and cached for QM9), as a ``StateDataset``."""
    from moldiff.chem.bond_labels import labelled_split  # RDKit, only where labels may need perceiving

    mols, info = labelled_split(spec)
    if info["left_out"]:
        print(f"{spec}: {len(mols)} molecules with bond labels ({info['source']}); left out: {info['left_out']}")
    vocab = vocabulary(features["vocabulary"])
    report = InputReport()
    mols = mols.checked(vocab, report)
    if report.n_rejected:
        print(f"{spec}: {report.n_rejected} molecules rejected: {report.to_dict()['rejected']}")
    if limit is not None and len(mols) > limit:
        mols = mols.subset(np.sort(np.random.default_rng(seed).permutation(len(mols))[:limit]))
    return StateDataset(mols, vocab, features.get("charges", (-1, 0, 1)))


def is_bond_model(cfg) -> bool:
    """Whether the config trains the bond model (positions, types, charges and bonds; issue 29)."""
    return cfg.model.get("name") in BOND_NETWORKS


def check_config(cfg) -> None:
    """Every value is checked here, before data are loaded (Hydra already rejects unknown keys)."""
    if is_bond_model(cfg):
        check_bond_model(_plain(cfg.model), _plain(cfg.noise), _plain(cfg.loss), _plain(cfg.dataset.features))
    else:
        build.check(_plain(cfg.model), _plain(cfg.noise), _plain(cfg.loss), _plain(cfg.dataset.features))
    for key in ("batch_size",):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    checked_batch_bounds(cfg.get("batch_atoms"), cfg.get("batch_edges"))
    if not 0.0 <= float(cfg.ema_decay) < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    ShadowEMA(cfg.get("shadow_ema") or [])  # checks its decays
    if float(cfg.optim.lr) <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    decay = _plain(cfg.optim.get("decay")) or {}
    if decay.get("kind", "none") != "none":
        lr_factor(decay["kind"], int(decay.get("steps") or 0), float(decay.get("final", 0.1)))
    if cfg.checkpoint.resume not in (None, "auto") and not Path(cfg.checkpoint.resume).is_file():
        raise FileNotFoundError(f"checkpoint.resume: no file {cfg.checkpoint.resume}")
    check_init_from(None if cfg.init_from is None else (SHIPPED if cfg.init_from == "shipped" else Path(cfg.init_from)),
                    cfg.checkpoint.resume)
    context = list(cfg.get("context") or [])
    if len(set(context)) != len(context):
        raise ValueError(f"context: a property is listed twice in {context}")
    if cfg.evaluate.sampler not in SAMPLERS:
        raise ValueError(f"evaluate.sampler: unknown {cfg.evaluate.sampler!r}; use one of {sorted(SAMPLERS)}")
    check_trainer(cfg)


# how each GEOM dataset's cache is made (docs/data.md); other names get both
_BUILDERS = {"geom_1k": "python scripts/build_conformers.py", "moses_bonds": "python scripts/build_conformers.py moses -n 100000",
             "geom": "python scripts/build_geom_cache.py <rdkit_folder or drugs_crude.msgpack>"}


def check_dataset_files(cfg) -> None:
    """A GEOM cache that was never built names the command that builds it (not numpy's bare
    "No such file"); QM9 needs none, its cache is made on first use. Checked when the data are
    loaded, not in check_config: a config naming a cache yet to be built is a valid config."""
    name = str(cfg.dataset.name)
    for key in ("train", "val"):
        head, _, path = str(cfg.dataset.get(key) or "").partition(":")
        if head == "geom" and path and not Path(path).is_file():
            build = _BUILDERS.get(name, " or ".join(_BUILDERS.values()))
            if not Path(path).is_absolute():  # the configs' paths are relative to where one runs
                path, build = f"{path} (under {Path.cwd()})", f"{build} (it writes under {data_root()}; train from the repository root)"
            raise FileNotFoundError(f"dataset={name}: no {key} cache {path}; build it first: {build}")


def check_trainer(cfg) -> None:
    """Build the trainer once, quietly: an unknown option or accelerator fails here."""
    try:
        with _quiet_lightning():  # a throwaway trainer: its banner would print twice
            pl.Trainer(**{**_trainer_kwargs(cfg), "logger": False, "enable_checkpointing": False, "enable_progress_bar": False})
    except (TypeError, ValueError) as e:
        raise ValueError(f"trainer: {e}") from None


@contextmanager
def _quiet_lightning():
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trainer_kwargs(cfg) -> dict:
    kw = _plain(cfg.trainer)
    kw.pop("name", None)
    if kw.get("enable_progress_bar") is None:  # a bar redrawn into a log file is noise
        kw["enable_progress_bar"] = sys.stderr.isatty()
    return kw


def load_split(spec: str, layout, limit: int | None = None, seed: int = 0, target=None) -> MoleculeDataset:
    report = InputReport()
    mols, _, _ = load_source(spec, report)
    mols = mols.checked(layout.vocab, report)
    if report.n_rejected:
        print(f"{spec}: {report.n_rejected} molecules rejected: {report.to_dict()['rejected']}")
    if limit is not None and len(mols) > limit:
        mols = mols.subset(np.sort(np.random.default_rng(seed).permutation(len(mols))[:limit]))
    return MoleculeDataset(mols, layout, target)


def size_histogram(ds: MoleculeDataset) -> dict[int, int]:
    sizes, counts = np.unique(ds.mols.n_atoms, return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts)}


def prepare(cfg) -> None:
    quiet_third_party()  # no advertisement, no known-harmless warnings in the run's output
    if cfg.trainer.accelerator == "cpu":
        tune_once()  # faster CPU steps (docs/performance.md); process-wide, once
    pl.seed_everything(int(cfg.seed), workers=True)


def _batch_bounds(cfg, ds: MoleculeDataset) -> dict:
    """Sampler arguments for batches bounded by atoms / edges (config batch_atoms / batch_edges), or none."""
    bounds = checked_batch_bounds(cfg.get("batch_atoms"), cfg.get("batch_edges"))
    if not bounds:
        return {}
    return {"sizes": ds.mols.n_atoms, "max_atoms": bounds.get("batch_atoms"), "max_edges": bounds.get("batch_edges")}


def world_size(trainer: dict) -> int:
    """Processes a run trains on (devices x nodes); 1 where the config leaves it to Lightning ("auto")."""
    devices = trainer.get("devices", 1)
    n = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) and devices > 0 else 1
    return n * int(trainer.get("num_nodes") or 1)


def check_one_batch(cfg, n_train: int) -> None:
    """Full batches only are trained on (the remainder waits for the next epoch's shuffle): a set
    smaller than one batch per process would train nothing and still exit 0."""
    if cfg.get("batch_atoms") is not None or cfg.get("batch_edges") is not None:
        return  # bounded batches take every molecule
    world = world_size(_plain(cfg.trainer))
    if n_train // world < int(cfg.batch_size):
        most = n_train // world
        per = f" per process ({world} processes)" if world > 1 else ""
        raise ValueError(f"dataset.train: {n_train} usable molecules, fewer than batch_size={cfg.batch_size}{per}: no full batch "
                         f"to train on; " + (f"set batch_size={most} or less" if most else "add molecules"))


def make_loaders(cfg, train: MoleculeDataset, val: MoleculeDataset | None):
    check_one_batch(cfg, len(train))
    sampler = EpochBatchSampler(len(train), int(cfg.batch_size), seed=int(cfg.seed), **_batch_bounds(cfg, train))
    if sampler.oversized:  # never dropped: each trains in a batch of its own
        print(f"batch_atoms={cfg.get('batch_atoms')}, batch_edges={cfg.get('batch_edges')}: {sampler.oversized} training "
              f"molecules exceed a bound (largest {int(train.mols.n_atoms.max())} atoms) and train in batches of their own")
    train_loader = ResumableLoader(train, sampler, num_workers=int(cfg.num_workers), persistent_workers=int(cfg.num_workers) > 0)
    val_loader = None
    if val is not None:
        val_sampler = EpochBatchSampler(len(val), int(cfg.batch_size), shuffle=False, drop_last=False, **_batch_bounds(cfg, val))
        val_loader = ResumableLoader(val, val_sampler)
    return train_loader, val_loader


def resume_path(cfg, ckpt_dir: Path) -> str | None:
    resume = None
    if cfg.checkpoint.resume == "auto":
        last = ckpt_dir / "last.ckpt"
        resume = str(last) if last.is_file() else None
    elif cfg.checkpoint.resume:
        resume = str(cfg.checkpoint.resume)
    if resume:
        load_file(resume)  # a file that is no checkpoint, or carries code, fails here in one line, not in Lightning
        print(f"resuming from {resume}")
    return resume


def fit(cfg, module, train_loader, val_loader, output_dir: Path, ckpt_dir: Path, record: TrainingRecord, extra_callbacks=()):
    """Lightning fit with moldiff's checkpointing (atomic, periodic, at the end), record and logs."""
    callbacks = [
        pl.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, save_last=True, every_n_train_steps=int(cfg.checkpoint.every_n_train_steps), save_top_k=0, save_on_train_epoch_end=True,
            enable_version_counter=False,  # last.ckpt is replaced in place, never joined by last-vN.ckpt copies
        ),
        record,
        SaveAtEnd(ckpt_dir / "last.ckpt"),
        *extra_callbacks,
    ]
    kwargs = _trainer_kwargs(cfg)
    if kwargs.get("max_time"):  # this leg's own time, not a total over earlier legs
        callbacks.append(LegTimer(duration=kwargs.pop("max_time"), interval="step"))
    loggers = []
    if "csv" in cfg.logs:
        loggers.append(pl.loggers.CSVLogger(output_dir, name="logs"))
    if "tensorboard" in cfg.logs:
        loggers.append(pl.loggers.TensorBoardLogger(output_dir, name="tensorboard"))
    trainer = pl.Trainer(
        **kwargs, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False, default_root_dir=output_dir,
    )
    # weights_only: a shared checkpoint is data; unpickling it must not be able to run code
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume_path(cfg, ckpt_dir), weights_only=True)
    return module


def run_training(cfg, output_dir: str | Path) -> DiffusionModule:
    check_config(cfg)
    check_dataset_files(cfg)
    prepare(cfg)
    output_dir = Path(output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else output_dir / "checkpoints"
    if is_bond_model(cfg):
        features = _plain(cfg.dataset.features)
        train = load_state_split(cfg.dataset.train, features, cfg.dataset.get("train_max"), int(cfg.seed))
        val = load_state_split(cfg.dataset.val, features, cfg.val_max, int(cfg.seed)) if cfg.dataset.val else None
        module = BondDiffusionModule(
            model=_plain(cfg.model), noise=_plain(cfg.noise), loss=_plain(cfg.loss), features=features, optim=_plain(cfg.optim),
            size_histogram=size_histogram(train), marginals=train.marginals(), ema_decay=float(cfg.ema_decay),
            seed=int(cfg.seed), dataset=str(cfg.dataset.name))
    else:
        layout = build.feature_layout(_plain(cfg.dataset.features))
        target = list(cfg.get("context") or []) or None  # a conditional model needs its properties in the batches
        train = load_split(cfg.dataset.train, layout, cfg.dataset.get("train_max"), int(cfg.seed), target)
        val = load_split(cfg.dataset.val, layout, cfg.val_max, int(cfg.seed), target) if cfg.dataset.val else None
        module = build_module(cfg, train)
    record = TrainingRecord()
    if cfg.init_from is not None:
        record.history = warm_start(module, SHIPPED if cfg.init_from == "shipped" else Path(cfg.init_from))
    extra = [SampleAndEvaluate(**_plain(cfg.evaluate))]
    if cfg.get("shadow_ema"):
        extra.append(ShadowEMA(cfg.shadow_ema))
    return fit(cfg, module, *make_loaders(cfg, train, val), output_dir, ckpt_dir, record, extra)


def check_init_from(path: Path | None, resume) -> None:
    """A warm start (``init_from``, resolved to ``path``) needs its file and excludes an explicit
    ``checkpoint.resume``; shared by the diffusion and property trainers."""
    if path is None:
        return
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_from: no file {path}")
    if resume not in (None, "auto"):
        raise ValueError("give either init_from (new run, warm start) or checkpoint.resume (continue a run), not both")


def build_module(cfg, train: MoleculeDataset) -> DiffusionModule:
    """A new model for this config, with the training set's atom counts (and property statistics)."""
    target = list(cfg.get("context") or []) or None
    context = Context.fit(target, train.y.view(len(train), -1).numpy()).to_dict() if target else None
    return DiffusionModule(
        model=_plain(cfg.model), noise=_plain(cfg.noise), loss=_plain(cfg.loss), features=_plain(cfg.dataset.features),
        optim=_plain(cfg.optim), size_histogram=size_histogram(train), ema_decay=float(cfg.ema_decay), seed=int(cfg.seed),
        dataset=str(cfg.dataset.name), context=context,
    )


def warm_start(module: DiffusionModule, path: Path) -> list:
    """Copy network and EMA weights from a checkpoint of the same architecture (a new run that
    continues training a model, e.g. the shipped one, with a fresh optimizer). Returns its record.
    An unconditional checkpoint can start a conditional model: the embedding's new context columns
    start at zero, so training begins from the unconditional model's predictions. A bond model
    without self-conditioning or fragment conditioning can start one with it the same way
    (``add_self_conditioning``, ``add_fragment_input``)."""
    ckpt = read_checkpoint(path)
    theirs = ckpt["hyper_parameters"]
    state = ckpt["state_dict"]
    mine = module.hparams["model"]
    if isinstance(module, BondDiffusionModule):  # checkpoints from before a switch existed had it off
        switches = {"self_condition": False, "fragment_condition": False}
        theirs = {**theirs, "model": {**switches, **theirs["model"]}}
        mine = {**switches, **mine}
    grown = [k for k in ("self_condition", "fragment_condition") if mine.get(k) and not theirs["model"].get(k)]
    if isinstance(module, BondDiffusionModule) and grown and {**theirs["model"], **{k: True for k in grown}} == mine:
        # a bond model starts one with self-conditioning or fragment conditioning, the new inputs inert
        net = module.model.net
        if "self_condition" in grown:
            state = add_self_conditioning(state, net.n_types, net.n_charges, net.n_bonds)
        if "fragment_condition" in grown:
            state = add_fragment_input(state, (net.n_types + net.n_charges) * (2 if net.self_condition else 1))
        theirs = {**theirs, "model": dict(mine)}
    for key in ("model", "noise", "features"):
        wanted = mine if key == "model" else module.hparams[key]
        same = build.same_noise(theirs[key], wanted) if key == "noise" else theirs[key] == wanted
        if not same:
            raise ValueError(f"init_from {path}: its {key} config {theirs[key]} differs from this run's {module.hparams[key]}")
    if theirs.get("context") and theirs.get("context") != module.hparams.get("context"):
        raise ValueError(f"init_from {path}: it is conditional on {theirs['context']['names']}; this run's context differs")
    ours = module.state_dict()
    for key, value in state.items():
        # only the input embedding differs: [h, t] in the checkpoint, [h, t, context] here
        if key.endswith("embedding.weight") and key in ours and value.shape[1] < ours[key].shape[1]:
            padded = torch.zeros_like(ours[key])
            padded[:, : value.shape[1]] = value  # [h, t] columns copied, context columns zero
            state[key] = padded
    module.load_state_dict(state, strict=True)
    print(f"warm start from {path}")
    return list(ckpt.get("moldiff_record", []))
