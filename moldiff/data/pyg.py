"""moldiff molecules for PyTorch Geometric: ``Data`` objects, batches and an in-memory dataset.

One molecule is a :class:`MoleculeData` with ``pos`` (N, 3) float32 Å, ``z`` (N,) atomic numbers,
``atom_type`` (N,) vocabulary indices and ``x`` (N, len(vocab)) one-hot types, plus every
per-molecule property of the ``MoleculeSet`` as a graph-level attribute of shape (1,) or (1, k)
(``(B,)`` / ``(B, k)`` in a batch). Positions are kept as stored (not centred), so
``from_pyg(to_pyg_batch(mols))`` gives ``mols`` back exactly (atomic numbers as int16, as moldiff's
datasets store them). moldiff's scaled diffusion features are
``FeatureLayout(vocab).encode_indices(data.atom_type)``.

This is the only moldiff module that imports ``torch_geometric``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data, InMemoryDataset

from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.elements import vocabulary
from moldiff.data.sources import load_source
from moldiff.data.user import infer_vocabulary

ATOM_KEYS = ("pos", "z", "atom_type", "x")


class MoleculeData(Data):
    """A molecule as PyG ``Data``.

    PyG batches every attribute with "index" in its name as node indices (concatenated on the
    last dimension, shifted by the atom count). Only ``*_index`` names (``edge_index`` and the like)
    are indices here, so a molecule property such as QM9's GDB ``index`` batches as plain rows.
    """

    def __cat_dim__(self, key, value, *args, **kwargs):
        if _is_property_named_index(key):
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)

    def __inc__(self, key, value, *args, **kwargs):
        if _is_property_named_index(key):
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def _is_property_named_index(key: str) -> bool:
    return "index" in key and not key.endswith("_index")


class MoldiffPyGDataset(InMemoryDataset):
    """moldiff molecules as a PyG dataset, built in memory from moldiff's own loaders.

    ``source``: a dataset name with ``split`` (``MoldiffPyGDataset("qm9", "train")``), a full
    source spec (``"qm9_noh:valid"``, ``"geom:<cache.npz>"``, an SDF/XYZ file or folder; see
    ``moldiff.data.sources``) or a ``MoleculeSet`` (e.g. generated samples). Nothing is downloaded
    and nothing is written: QM9 comes from moldiff's offline cache. ``vocab`` (a ``Vocabulary``
    or its name) sets the atom types; by default the source's own vocabulary.
    """

    def __init__(
        self,
        source: str | MoleculeSet,
        split: str | None = None,
        vocab: Vocabulary | str | None = None,
        transform=None,
    ):
        super().__init__(root=None, transform=transform)
        if isinstance(source, MoleculeSet):
            mols, natural = source, infer_vocabulary(source)
        else:
            mols, _, natural = load_source(f"{source}:{split}" if split else source)
        self.vocab = _vocabulary(vocab) if vocab is not None else natural
        types = self.vocab.encode(mols.numbers)
        if (types < 0).any():
            bad = sorted(set(mols.numbers[types < 0].tolist()))
            raise ValueError(f"atomic numbers {bad} are not in the {self.vocab.name} vocabulary {self.vocab.symbols}")
        # InMemoryDataset's storage (one concatenated Data plus per-key offsets) is exactly the
        # MoleculeSet layout, so it is built from the flat arrays without a per-molecule loop.
        types = torch.from_numpy(types)
        atoms = {
            "pos": torch.from_numpy(mols.positions),
            "z": torch.from_numpy(mols.numbers.astype(np.int64)),
            "atom_type": types,
            "x": torch.nn.functional.one_hot(types, len(self.vocab)).float(),
        }
        properties = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in mols.properties.items()}
        atom_slices, molecule_slices = torch.from_numpy(mols.offsets), torch.arange(len(mols) + 1)
        self.data = MoleculeData(**atoms, **properties)
        self.slices = {k: atom_slices for k in atoms} | {k: molecule_slices for k in properties}


def _vocabulary(vocab: Vocabulary | str) -> Vocabulary:
    return vocabulary(vocab) if isinstance(vocab, str) else vocab


def to_pyg(molecules: MoleculeSet, vocab: Vocabulary | str | None = None) -> list[MoleculeData]:
    """One :class:`MoleculeData` per molecule."""
    return list(MoldiffPyGDataset(molecules, vocab=vocab))


def to_pyg_batch(molecules: MoleculeSet, vocab: Vocabulary | str | None = None) -> Batch:
    """All molecules in one PyG ``Batch`` (``batch``/``ptr`` give each atom's molecule)."""
    return Batch.from_data_list(to_pyg(molecules, vocab))


def from_pyg(data: Data | Batch | Sequence[Data], vocab: Vocabulary | str | None = None) -> MoleculeSet:
    """A ``MoleculeSet`` from one ``Data``, a ``Batch`` or a list of ``Data``.

    Elements come from ``z``, else from ``atom_type`` decoded with ``vocab``. Every other tensor
    with one row per molecule (edges aside) becomes a property, so graph-level targets of other
    PyG datasets (``y``, ``idx``) come along.
    """
    if not isinstance(data, Data):
        data = Batch.from_data_list(list(data))
    if isinstance(data, Batch):
        offsets, n_mol = data.ptr.cpu().numpy(), data.num_graphs
    else:
        offsets, n_mol = np.array([0, data.num_nodes]), 1
    if "z" in data:
        numbers = data.z.cpu().numpy()
    elif "atom_type" in data and vocab is not None:
        numbers = _vocabulary(vocab).numbers[data.atom_type.cpu().numpy()]
    else:
        raise ValueError("from_pyg needs atomic numbers `z`, or `atom_type` and the vocabulary it indexes")
    properties = {
        k: v.detach().cpu().numpy()
        for k, v in data.items()
        if torch.is_tensor(v)
        and k not in ATOM_KEYS + ("batch", "ptr", "face")
        and "edge" not in k
        and v.dim() > 0
        and len(v) == n_mol
    }
    # int16: the dtype moldiff's datasets store atomic numbers in
    return MoleculeSet(numbers.astype(np.int16), data.pos.detach().cpu().numpy(), offsets, properties)
