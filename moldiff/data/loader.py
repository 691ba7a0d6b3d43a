"""Batches of molecules for training: flat atom arrays gathered without a Python loop, and a
batch order that is a pure function of (seed, epoch) so an interrupted run resumes exactly.

A batch is a ``MoleculeBatch``: centred positions ``x`` (A, 3), scaled features ``h`` (A, F),
``batch`` (A,) molecule index and ``n_mol``. ``EpochBatchSampler`` shards the epoch's permutation
across DDP ranks itself (so Lightning must not swap in its own sampler) and can skip the batches
an interrupted epoch already trained on; ``ResumableLoader`` exposes that position to Lightning's
checkpoints through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from moldiff.data.features import FeatureLayout
from moldiff.data.molecules import MoleculeSet


@dataclass
class MoleculeBatch:
    x: torch.Tensor
    h: torch.Tensor
    batch: torch.Tensor
    n_mol: int
    y: torch.Tensor | None = None  # (M,) or (M, K): molecular properties, when the dataset has targets

    def to(self, device) -> "MoleculeBatch":
        y = None if self.y is None else self.y.to(device)
        return MoleculeBatch(self.x.to(device), self.h.to(device), self.batch.to(device), self.n_mol, y)

    def __len__(self) -> int:
        return self.n_mol


class MoleculeDataset(Dataset):
    """Indexable by a whole array of molecule indices (one call per batch, no per-molecule work)."""

    def __init__(self, mols: MoleculeSet, layout: FeatureLayout, target: str | Sequence[str] | None = None):
        idx = layout.vocab.encode(mols.numbers)
        if (idx < 0).any():
            bad = sorted(set(mols.numbers[idx < 0].tolist()))
            raise ValueError(f"atomic numbers {bad} are not in the {layout.vocab.name} vocabulary; check or filter the data first")
        self.mols = mols.centered()
        self.types = idx
        self.layout = layout
        self.y = None
        if target is not None:  # one name: y (M,); a list of names: y (M, K)
            names = [target] if isinstance(target, str) else list(target)
            for name in names:
                if name not in mols.properties:
                    raise ValueError(f"unknown property {name!r}; this dataset has {sorted(mols.properties)}")
            y = np.stack([np.asarray(mols.properties[name], dtype=np.float64) for name in names], axis=1)
            self.y = torch.as_tensor(y[:, 0] if isinstance(target, str) else y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.mols)

    def __getitem__(self, index) -> MoleculeBatch:
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        counts = self.mols.n_atoms[index]
        starts = self.mols.offsets[:-1][index]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        atoms = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        x = torch.from_numpy(self.mols.positions[atoms])
        h = self.layout.encode_indices(torch.from_numpy(self.types[atoms]))
        batch = torch.from_numpy(np.repeat(np.arange(len(index)), counts))
        y = None if self.y is None else self.y[torch.from_numpy(index)]
        return MoleculeBatch(x, h, batch, len(index), y)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler):
    """Batches of indices: a permutation seeded by (seed, epoch), split evenly over ranks.

    Every rank gets the same number of full batches (the remainder of the permutation is left
    for the next epoch's different shuffle, as ``drop_last`` does).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained on (set on resume)
        self.yielded = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rank, world = _dist_rank_world()
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        per_rank = self.n // world
        mine = order[rank * per_rank : (rank + 1) * per_rank] if world > 1 else order
        full = len(mine) // self.batch_size
        cuts = [mine[i * self.batch_size : (i + 1) * self.batch_size] for i in range(full)]
        if not self.drop_last and len(mine) % self.batch_size:
            cuts.append(mine[full * self.batch_size :])
        return cuts

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        batches = self._batches()
        start, self.skip = self.skip, 0
        self.yielded = start
        for b in batches[start:]:
            self.yielded += 1
            yield b


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints (Lightning calls
    ``state_dict`` at save time and ``load_state_dict`` before resuming the epoch).

    The position saved is the number of batches the training loop has *finished*, which the
    training module reports through ``mark_trained`` (the loader itself runs one batch ahead).
    """

    def __init__(self, dataset: MoleculeDataset, batch_sampler: EpochBatchSampler, **kwargs):
        super().__init__(dataset, batch_size=None, sampler=batch_sampler, collate_fn=_identity, **kwargs)
        self.batch_sampler_ = batch_sampler
        self.trained = 0

    def mark_trained(self, epoch: int, batches: int) -> None:
        self.batch_sampler_.epoch = epoch
        self.trained = batches

    def epoch_unfinished(self) -> bool:
        """True while training is part-way through the epoch (some, not all, of its batches trained)."""
        return 0 < self.trained < len(self.batch_sampler_)

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler_.epoch, "trained": self.trained, "seed": self.batch_sampler_.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.batch_sampler_.seed:
            raise ValueError(f"resuming with data seed {self.batch_sampler_.seed}, the checkpoint used {state.get('seed')}")
        self.batch_sampler_.epoch = int(state["epoch"])
        self.batch_sampler_.skip = int(state["trained"])
        self.trained = int(state["trained"])


def _identity(x):
    return x
