"""PyTorch Geometric interop: exact round trips, batch shapes, PyG's DataLoader, real QM9."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from moldiff.data import GEOM_VOCAB, QM9_VOCAB, MoleculeSet
from moldiff.data.pyg import MoldiffPyGDataset, from_pyg, to_pyg, to_pyg_batch


def _toy() -> MoleculeSet:
    rng = np.random.default_rng(0)
    mols = [([6, 1, 1, 1, 1], rng.normal(size=(5, 3))), ([8], rng.normal(size=(1, 3))), ([7, 9, 6], rng.normal(size=(3, 3)))]
    return MoleculeSet.from_list(
        mols,
        index=np.array([5, 9, 11]),  # PyG would shift an attribute named "index" by the atom count
        gap=rng.normal(size=3),
        dipole=rng.normal(size=(3, 3)).astype(np.float32),
        split=np.array([0, 1, 2], np.int8),
    )


def _assert_same(a: MoleculeSet, b: MoleculeSet) -> None:
    assert np.array_equal(a.numbers, b.numbers) and a.numbers.dtype == b.numbers.dtype
    assert np.array_equal(a.positions, b.positions) and a.positions.dtype == b.positions.dtype
    assert np.array_equal(a.offsets, b.offsets)
    assert a.properties.keys() == b.properties.keys()
    for k in a.properties:
        assert np.array_equal(a.properties[k], b.properties[k]) and a.properties[k].dtype == b.properties[k].dtype, k


def test_round_trip_is_exact():
    mols = _toy()
    _assert_same(from_pyg(to_pyg_batch(mols)), mols)
    _assert_same(from_pyg(to_pyg(mols)), mols)
    _assert_same(from_pyg(to_pyg(mols)[2]), mols.subset([2]))
    no_z = to_pyg_batch(mols)
    del no_z.z
    _assert_same(from_pyg(no_z, "qm9"), mols)  # atom types decoded with the vocabulary
    with pytest.raises(ValueError, match="vocabulary"):
        from_pyg(no_z)


def test_data_and_batch_contents():
    mols = _toy()
    d = to_pyg(mols)[0]
    assert d.pos.shape == (5, 3) and d.pos.dtype == torch.float32
    assert d.z.tolist() == [6, 1, 1, 1, 1] and d.z.dtype == torch.long
    assert d.atom_type.tolist() == [1, 0, 0, 0, 0] and d.x.shape == (5, len(QM9_VOCAB))
    assert torch.equal(d.x.argmax(1), d.atom_type) and torch.equal(d.x.sum(1), torch.ones(5))
    assert d.gap.shape == (1,) and d.gap.dtype == torch.float64 and d.dipole.shape == (1, 3)

    b = to_pyg_batch(mols)
    assert b.num_graphs == 3 and b.pos.shape == (9, 3) and b.z.shape == b.atom_type.shape == b.batch.shape == (9,)
    assert b.ptr.tolist() == [0, 5, 6, 9] and b.batch.tolist() == [0] * 5 + [1] + [2] * 3
    assert b.index.tolist() == [5, 9, 11] and b.gap.shape == (3,) and b.dipole.shape == (3, 3)
    assert b.get_example(2).index.tolist() == [11]

    geom = to_pyg(mols, GEOM_VOCAB)[0]
    assert geom.x.shape == (5, len(GEOM_VOCAB)) and GEOM_VOCAB.symbols[int(geom.atom_type[0])] == "C"
    with pytest.raises(ValueError, match="not in the qm9 vocabulary"):
        to_pyg(MoleculeSet.from_list([([6, 17], np.zeros((2, 3)))]), "qm9")


def _complete_graph(data):
    n = data.num_nodes
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    data.edge_index = torch.stack([i[i != j], j[i != j]])
    return data


def test_pyg_dataloader_batches_a_dataset():
    mols = _toy()
    ds = MoldiffPyGDataset(mols, transform=_complete_graph)
    assert len(ds) == 3 and ds.vocab is QM9_VOCAB
    batches = list(DataLoader(ds, batch_size=2))
    assert [b.num_graphs for b in batches] == [2, 1]
    assert batches[0].index.tolist() == [5, 9] and batches[1].index.tolist() == [11]
    whole = next(iter(DataLoader(ds, batch_size=3)))
    # a transform's edges (*_index) are shifted by each molecule's first atom, the `index` property is not
    assert whole.edge_index.shape == (2, 20 + 0 + 6) and whole.edge_index[:, 20:].min() == 6
    assert whole.index.tolist() == [5, 9, 11]
    back = MoleculeSet.concatenate([from_pyg(b) for b in batches])
    _assert_same(back, mols)


def test_real_qm9_split(qm9_test):
    ds = MoldiffPyGDataset("qm9", "test")  # built from moldiff's offline cache; nothing downloaded
    ref = qm9_test
    assert len(ds) == 13_083 and ds.vocab is QM9_VOCAB
    d = ds[7]
    assert d.z.tolist() == ref[7][0].tolist() and torch.equal(d.pos, torch.from_numpy(ref[7][1]))
    assert set(d.keys()) >= {"pos", "z", "atom_type", "x", "alpha", "gap", "index"}
    batch = next(iter(DataLoader(ds, batch_size=64)))
    assert batch.num_graphs == 64 and batch.x.shape == (int(ref.n_atoms[:64].sum()), 5)
    _assert_same(from_pyg(batch), ref.subset(np.arange(64)))
    assert len(MoldiffPyGDataset("qm9_noh:test")) == 13_083


def test_only_the_pyg_module_imports_torch_geometric():
    root = Path(__file__).resolve().parents[1] / "moldiff"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "torch_geometric" in p.read_text())
    assert users == ["data/pyg.py"]
