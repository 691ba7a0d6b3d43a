"""Callbacks and plugins of the training job: atomic checkpoint files and periodic
sample-and-evaluate with the evaluation metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from moldiff.chem.edm_protocol import edm_bond_graph, edm_stability
from moldiff.io.writers import atomic_write
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.sampling.generate import generate


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder and rename it into place,
    so a run killed while saving leaves the previous checkpoint intact, never half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)


class SampleAndEvaluate(pl.Callback):
    """Every ``every_n_epochs`` epochs, sample ``n`` molecules with the EMA network and log EDM's
    atom and molecule stability and validity (``eval/...``). Needs RDKit for validity; without
    it (e.g. on a bare GPU machine) only stability is logged."""

    def __init__(self, every_n_epochs: int | None = 10, n: int = 100, steps: int = 100, sampler: str = "ancestral", seed: int = 0):
        every_n_epochs = 0 if every_n_epochs is None else every_n_epochs  # null, as 0: no periodic evaluation
        self.every, self.n, self.steps, self.sampler, self.seed = int(every_n_epochs), int(n), int(steps), sampler, int(seed)

    def _conditions(self, trainer, module) -> dict:
        """A conditional model samples (atom count, targets) pairs of training molecules, as EDM does."""
        if getattr(module, "context", None) is None:
            return {}
        ds = trainer.train_dataloader.dataset
        idx = np.random.default_rng(self.seed).choice(len(ds), size=self.n, replace=self.n > len(ds))
        return {"sizes": ds.mols.n_atoms[idx].astype(np.int64), "context": ds.y[torch.as_tensor(idx)]}

    def on_train_epoch_end(self, trainer, module):
        if self.every <= 0 or self.n <= 0 or (trainer.current_epoch + 1) % self.every:
            return
        if trainer.global_rank != 0:
            return
        was_training = module.training
        module.eval()
        model = getattr(module, "model", None)
        try:
            if isinstance(model, BondDiffusionModel):  # its own sampler; the written graph is judged too
                mols = model.sample(self.n, steps=self.steps, seed=self.seed, sampler=self.sampler)
            else:
                # deliberately the sampler's exact form (not sample.py's recommended options), so the
                # learning curve stays comparable across the campaign's legs
                mols = generate(module, self.n, sampler=self.sampler, steps=self.steps, seed=self.seed, device=module.device,
                                progress=False, **self._conditions(trainer, module))
        finally:
            module.train(was_training)
        if isinstance(model, BondDiffusionModel):
            metrics = {**quick_metrics(mols, model.vocab), **written_graph_metrics(mols)}
        else:
            metrics = quick_metrics(mols, module.layout.vocab)
        for k, v in metrics.items():
            module.log(f"eval/{k}", v, rank_zero_only=True)


def written_graph_metrics(mols) -> dict[str, float]:
    """Validity and stability of the bond model's own graphs (``graph/...``), where RDKit is installed."""
    try:
        from moldiff.metrics.graph import graph_metrics
    except ImportError:
        return {}
    # an undefined rate (uniqueness with nothing valid) is left out, not logged as 0
    return {f"graph_{k}": float(v) for k, v in graph_metrics(mols).items() if k not in ("n", "n_judged") and v is not None}


def quick_metrics(mols, vocab) -> dict[str, float]:
    """EDM-protocol atom/molecule stability (numpy only) and, with RDKit, validity."""
    graph = edm_bond_graph(mols, vocab)
    atom_ok, mol_ok = edm_stability(mols, vocab, graph)
    out = {"atom_stability": float(atom_ok.mean()), "molecule_stability": float(mol_ok.mean())}
    try:
        from moldiff.chem.edm_rdkit import edm_validity
    except ImportError:
        warnings.warn("RDKit is not installed: periodic evaluation logs stability only", stacklevel=2)
        return out
    _, largest = edm_validity(mols, graph)
    out["validity"] = float(sum(s is not None for s in largest) / max(len(mols), 1))
    return out


class SaveAtEnd(pl.Callback):
    """``last.ckpt`` also when training stops between periodic checkpoints (max_steps, max_time,
    max_epochs, SIGTERM, Ctrl-C), so no finished step is lost and a rerun continues from exactly there.

    A stop by ``max_steps`` or ``max_time`` ends Lightning's epoch loop early, and Lightning then
    counts that epoch as finished: a rerun would start the next epoch's shuffle and never train the
    rest of this one. Every checkpoint saved while the loader is part-way through its epoch is
    therefore written as a mid-epoch one (the state Lightning's own mid-epoch checkpoints have), and
    the rerun finishes the epoch from the loader's position, as an uninterrupted run does."""

    def __init__(self, path):
        self.path = path

    def _save(self, trainer):
        # a full, resumable checkpoint (optimizer and loop state too); saying so keeps Lightning
        # from logging that it chose this default
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer, module):
        self._save(trainer)

    def on_exception(self, trainer, module, exception):
        # `kill <pid>` (SIGTERM) or Ctrl-C ends a leg cleanly: Lightning stops after the current
        # step, and that step is saved like any other end (a crash keeps the periodic checkpoint)
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._save(trainer)

    def on_save_checkpoint(self, trainer, module, checkpoint):
        loader = trainer.train_dataloader
        if not hasattr(loader, "epoch_unfinished") or not loader.epoch_unfinished():
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
        for counts in (progress["total"], progress["current"]):
            if counts["processed"] == counts["started"] > 0:  # marked finished: undo the epoch's end
                counts["processed"] = counts["completed"] = counts["started"] - 1
        checkpoint["epoch"] = progress["current"]["started"] - 1


class LegTimer(pl.callbacks.Timer):
    """``trainer.max_time`` as the budget of this leg alone. Lightning's own timer restores the time
    of earlier legs from the checkpoint, so a resumed run with the same ``max_time`` would stop at
    once; a campaign is budgeted leg by leg."""

    def load_state_dict(self, state_dict) -> None:
        pass


class ShadowEMA(pl.Callback):
    """Extra exponential moving averages of the trained weights at other decays (e.g. 0.9999 beside
    the model's own 0.999), to compare EMA decays on one run: training is untouched, so every
    decay sees the same trajectory at the cost of one copy of the weights each. They are kept in
    the checkpoint (exact resume); a run resumed from a checkpoint without them starts them from
    its EMA weights. ``export_checkpoint(..., shadow_ema=d)`` writes a model with one of them as
    its EMA weights."""

    def __init__(self, decays):
        self.decays = [float(d) for d in decays]
        for d in self.decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"shadow_ema: each decay must be in [0, 1), got {d}")
        self.averages: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def state_key(self) -> str:
        return "ShadowEMA"

    def _start(self, module):
        start = module.model.network(ema=True).state_dict()
        for d in self.decays:
            self.averages.setdefault(repr(d), {k: v.detach().clone() for k, v in start.items()})

    def on_train_start(self, trainer, module):
        self._start(module)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if getattr(module, "_skip_update", False):  # a skipped step moves no average (as the model's own EMA)
            return
        current = module.net.state_dict()
        for d in self.decays:
            for k, avg in self.averages[repr(d)].items():
                if avg.is_floating_point():
                    avg.lerp_(current[k].to(avg.dtype), 1.0 - d)
                else:
                    avg.copy_(current[k])

    def state_dict(self):
        return {"averages": self.averages}

    def load_state_dict(self, state_dict):
        self.averages = {k: v for k, v in state_dict["averages"].items() if float(k) in self.decays}
