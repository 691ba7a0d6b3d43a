"""Training batches for the bond model: molecules with bonds and formal charges as ``MolState``s.

``StateDataset(mols, vocab, charges)`` takes a ``MoleculeSet`` that carries bonds and charges
(``moldiff.chem.bond_labels`` adds them to QM9; drug-like sets store them) and is indexed by a
whole array of molecule indices, like ``MoleculeDataset``, so ``EpochBatchSampler`` and
``ResumableLoader`` (exact resume) serve it unchanged. Positions are centred; atom types and
formal charges become class indices; each molecule's bond list becomes the dense class of every
unordered pair (0: no bond). ``marginals()`` gives the class frequencies the categorical
processes use as their prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import BOND_ORDERS, MoleculeSet
from moldiff.state import MolState, pair_index

BOND_CLASSES = (0, *BOND_ORDERS)  # none, single, double, triple, aromatic: class k is order code k


class StateDataset(Dataset):
    def __init__(self, mols: MoleculeSet, vocab: Vocabulary, charges: Sequence[int]):
        if not mols.has_bonds or mols.charges is None:
            raise ValueError("the bond model trains on molecules with bonds and formal charges (MoleculeSet.bonds, .charges)")
        types = vocab.encode(mols.numbers)
        if (types < 0).any():
            bad = sorted(set(mols.numbers[types < 0].tolist()))
            raise ValueError(f"atomic numbers {bad} are not in the {vocab.name} vocabulary; check or filter the data first")
        self.charge_values = tuple(int(c) for c in charges)
        lookup = {c: k for k, c in enumerate(self.charge_values)}
        unknown = sorted(set(np.unique(mols.charges).tolist()) - set(lookup))
        if unknown:
            raise ValueError(f"formal charges {unknown} are not among the model's classes {list(self.charge_values)}")
        self.mols = mols.centered()
        self.types = types.astype(np.int64)
        self.charge_idx = np.vectorize(lookup.get, otypes=[np.int64])(mols.charges) if len(mols.charges) else np.zeros(0, np.int64)
        self.vocab = vocab
        self.y = None  # no conditioning yet: the loaders' and callbacks' attribute

    def __len__(self) -> int:
        return len(self.mols)

    def __getitem__(self, index) -> MolState:
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        sub = self.mols.subset(index)
        counts = sub.n_atoms
        atoms, _ = self.mols._rows(self.mols.offsets, index)
        batch = torch.from_numpy(np.repeat(np.arange(len(index)), counts))
        state = MolState(batch, len(index), pos=torch.from_numpy(sub.positions),
                         atom_type=torch.from_numpy(self.types[atoms]), charge=torch.from_numpy(self.charge_idx[atoms]))
        state.bond = dense_bonds(sub, state)
        return state

    def marginals(self) -> dict[str, list[float]]:
        """Class frequencies of atom types, charges and pair classes (none included) over the set."""
        n = self.mols.n_atoms.astype(np.int64)
        pairs = int((n * (n - 1) // 2).sum())
        orders = np.bincount(self.mols.bonds[:, 2], minlength=max(BOND_CLASSES) + 1)[list(BOND_CLASSES)].astype(np.float64)
        orders[0] = pairs - orders[1:].sum()
        freq = lambda c: (c / max(c.sum(), 1)).tolist()  # noqa: E731
        return {"atom_type": freq(np.bincount(self.types, minlength=len(self.vocab)).astype(np.float64)),
                "charge": freq(np.bincount(self.charge_idx, minlength=len(self.charge_values)).astype(np.float64)),
                "bond": freq(orders)}


def dense_bonds(mols: MoleculeSet, state: MolState) -> torch.Tensor:
    """(P,) class of every unordered pair of ``state`` (laid out from ``mols``' atom counts)."""
    bond = torch.zeros(len(state.pair_batch), dtype=torch.long)
    if len(mols.bonds):
        mol_of_bond = np.repeat(np.arange(len(mols)), np.diff(mols.bond_offsets))
        n = mols.n_atoms.astype(np.int64)
        per_mol = n * (n - 1) // 2
        pair_start = np.concatenate([[0], np.cumsum(per_mol)])[:-1]
        i, j, order = (torch.from_numpy(c.astype(np.int64)) for c in mols.bonds.T)
        idx = pair_index(i, j, torch.from_numpy(n[mol_of_bond]), torch.from_numpy(pair_start[mol_of_bond]))
        bond[idx] = order  # a class index is its order code (BOND_CLASSES)
    return bond
