"""Batches of molecules for training: flat atom arrays gathered without a Python loop, and a
batch order that is a pure function of (seed, epoch) so an interrupted run resumes exactly.

A batch is a ``MoleculeBatch``: centred positions ``x`` (A, 3), scaled features ``h`` (A, F),
``batch`` (A,) molecule index and ``n_mol``. ``EpochBatchSampler`` shards the epoch's permutation
across DDP ranks itself (so Lightning must not swap in its own sampler) and can skip the batches
an interrupted epoch already trained on; ``ResumableLoader`` exposes that position to Lightning's
checkpoints through ``state_dict``/``load_state_dict``.

Batches hold ``batch_size`` molecules, or, with ``max_atoms`` / ``max_edges`` (config
``batch_atoms`` / ``batch_edges``), as many whole molecules as fit under sum N atoms / sum N (N - 1)
fully connected edges, taken in the epoch's order (``pack_batches``). A molecule over a bound gets
a batch of its own (counted in ``EpochBatchSampler.oversized``), never dropped. The EGNN's memory
and time grow with edges, so ``max_edges`` is the bound that holds memory flat on a full graph
(docs/performance.md, "GEOM scale").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from moldiff.data.features import FeatureLayout
from moldiff.data.molecules import MoleculeSet
from moldiff.state import MolState


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

    def state(self) -> MolState:
        """The batch as the Gaussian model's ``MolState``: positions and the continuous features
        (EDM's scaled one-hot types and charge channel) as ``atom_type``. A conditional model's raw
        targets ``y`` stay here: its denoiser reads them through a ``ContextSlot``."""
        return MolState(self.batch, self.n_mol, pos=self.x, atom_type=self.h)


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


def checked_batch_bounds(batch_atoms=None, batch_edges=None) -> dict:
    """The config's ``batch_atoms`` / ``batch_edges`` that are set, each checked to be a whole
    number >= 1 (a float or a string would be silently truncated or fail deep inside the packing)."""
    bounds = {}
    for key, value in (("batch_atoms", batch_atoms), ("batch_edges", batch_edges)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be null or a whole number >= 1, got {value!r}")
        bounds[key] = value
    return bounds


def pack_batches(sizes: np.ndarray, max_atoms: int | None = None, max_edges: int | None = None) -> np.ndarray:
    """Cut points (B + 1,) of next-fit batches over molecules of ``sizes`` atoms, in the given order:
    batch k is molecules ``cuts[k]:cuts[k + 1]``, the longest run whose sum N stays <= ``max_atoms``
    and whose sum N (N - 1) stays <= ``max_edges`` (either may be None), at least one molecule.

    Next-fit, not a better packing: it keeps the order (hence the shuffle) and costs one
    ``searchsorted`` per batch, not a Python step per molecule.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    limits = [(np.concatenate([[0], np.cumsum(cost)]), int(bound))
              for cost, bound in ((sizes, max_atoms), (sizes * (sizes - 1), max_edges)) if bound is not None]
    n = len(sizes)
    cuts = [0]
    while cuts[-1] < n:
        i = cuts[-1]
        j = n
        for cum, bound in limits:  # last end whose running cost from i stays within the bound
            j = min(j, int(np.searchsorted(cum, cum[i] + bound, side="right")) - 1)
        cuts.append(max(j, i + 1))  # a molecule over a bound: a batch of its own
    return np.asarray(cuts, dtype=np.int64)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler):
    """Batches of indices: a permutation seeded by (seed, epoch), split evenly over ranks.

    Every rank gets the same number of full batches (the remainder of the permutation is left
    for the next epoch's different shuffle, as ``drop_last`` does).

    Bounded batches (``max_atoms`` and/or ``max_edges``, with the molecules' atom counts
    ``sizes``; ``batch_size`` is then not used): the whole permutation is cut by ``pack_batches``,
    so one process sees every molecule exactly once per epoch (``drop_last`` does not apply).
    Under DDP batch k goes to rank k % world and the last (B % world) batches wait for the next
    epoch's shuffle (``left_out`` molecules), so all ranks run the same number of steps.
    ``oversized``: molecules over a bound, each trained alone in every epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 sizes: np.ndarray | None = None, max_atoms: int | None = None, max_edges: int | None = None):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained on (set on resume)
        self.yielded = 0
        self.max_atoms = None if max_atoms is None else int(max_atoms)
        self.max_edges = None if max_edges is None else int(max_edges)
        self.oversized = 0
        self.left_out = 0
        self._cache = None  # (epoch, rank, world) -> batches: len() is asked at every checkpoint
        if self.bounded:
            for name, bound in (("max_atoms", self.max_atoms), ("max_edges", self.max_edges)):
                if bound is not None and bound < 1:
                    raise ValueError(f"{name} must be >= 1, got {bound}")
            if sizes is None or len(sizes) != n:
                raise ValueError(f"bounded batches need the atom counts of all {n} molecules (sizes=)")
            self.sizes = np.asarray(sizes, dtype=np.int64)
            over = np.zeros(n, dtype=bool)
            if self.max_atoms is not None:
                over |= self.sizes > self.max_atoms
            if self.max_edges is not None:
                over |= self.sizes * (self.sizes - 1) > self.max_edges
            self.oversized = int(over.sum())

    @property
    def bounded(self) -> bool:
        return self.max_atoms is not None or self.max_edges is not None

    def bounds(self) -> dict:
        """The batch bounds, as saved in checkpoints (empty for batches of ``batch_size``)."""
        return {"max_atoms": self.max_atoms, "max_edges": self.max_edges} if self.bounded else {}

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rank, world = _dist_rank_world()
        if self.bounded:
            return self._bounded_batches(rank, world)
        order = self._order()
        per_rank = self.n // world
        mine = order[rank * per_rank : (rank + 1) * per_rank] if world > 1 else order
        full = len(mine) // self.batch_size
        cuts = [mine[i * self.batch_size : (i + 1) * self.batch_size] for i in range(full)]
        if not self.drop_last and len(mine) % self.batch_size:
            cuts.append(mine[full * self.batch_size :])
        return cuts

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)

    def _bounded_batches(self, rank: int, world: int) -> list[np.ndarray]:
        key = (self.epoch, rank, world)
        if self._cache is None or self._cache[0] != key:
            order = self._order()
            cuts = pack_batches(self.sizes[order], self.max_atoms, self.max_edges)
            batches = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
            if world > 1:
                kept = len(batches) // world * world
                self.left_out = int(sum(len(b) for b in batches[kept:]))
                batches = batches[rank:kept:world]
            self._cache = (key, batches)
        return self._cache[1]

    def __len__(self) -> int:
        return len(self._batches())

    def unbounded_len(self) -> int:
        """Batches per epoch with ``batch_size`` molecules each (what a checkpoint without bounds counted)."""
        per_rank = self.n // _dist_rank_world()[1]
        return per_rank // self.batch_size + int(not self.drop_last and per_rank % self.batch_size > 0)

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
        state = {"epoch": self.batch_sampler_.epoch, "trained": self.trained, "seed": self.batch_sampler_.seed}
        if self.batch_sampler_.bounded:  # only then: batches of batch_size save what they always saved
            state.update(self.batch_sampler_.bounds(), batches=len(self.batch_sampler_))
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.batch_sampler_.seed:
            raise ValueError(f"resuming with data seed {self.batch_sampler_.seed}, the checkpoint used {state.get('seed')}")
        saved = {k: state[k] for k in ("max_atoms", "max_edges") if k in state}
        batches = state.get("batches", self.batch_sampler_.unbounded_len())  # a checkpoint of batch_size batches
        if saved != self.batch_sampler_.bounds() and 0 < int(state["trained"]) < int(batches):
            # mid-epoch, the saved position counts batches cut another way: it would skip other molecules
            raise ValueError(f"resuming mid-epoch with batch bounds {self.batch_sampler_.bounds() or 'none (batch_size)'}, "
                             f"the checkpoint used {saved or 'none (batch_size)'}; resume with its settings (change them at an epoch's end)")
        self.batch_sampler_.epoch = int(state["epoch"])
        self.batch_sampler_.skip = int(state["trained"])
        self.trained = int(state["trained"])


def _identity(x):
    return x
