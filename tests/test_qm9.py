"""QM9 from qm9pack: EDM's split, features, properties, cache."""

import numpy as np

from moldiff.data import qm9
from moldiff.data.elements import QM9_VOCAB


def test_split_sizes_and_disjoint():
    mols = qm9.load_qm9("all")
    assert len(mols) == 130_831
    split = mols.properties["split"]
    assert np.bincount(split).tolist() == [100_000, 17_748, 13_083]
    for name, n in [("train", 100_000), ("valid", 17_748), ("test", 13_083)]:
        assert len(qm9.load_qm9(name)) == n
    # GDB order within the data and within each split.
    assert (np.diff(mols.properties["index"]) > 0).all()


def test_split_is_cormorants_permutation():
    # Independent restatement of gen_splits_gdb9: perm over the 130,831 included molecules.
    np.random.seed(0)
    perm = np.random.permutation(130_831)
    codes = qm9.edm_split_codes()
    assert (codes[perm[:100_000]] == 0).all()
    assert (codes[perm[100_000:117_748]] == 1).all()
    assert (codes[perm[117_748:]] == 2).all()


def test_conditional_halves():
    mols = qm9.load_qm9("all")
    half, split = mols.properties["half"], mols.properties["split"]
    assert np.bincount(half).tolist() == [30_831, 50_000, 50_000]
    assert (split[half > 0] == 0).all()
    train = np.flatnonzero(split == 0)
    np.random.seed(42)
    perm = np.random.permutation(100_000)
    assert (half[train[perm[:50_000]]] == 1).all()
    first = qm9.load_qm9("train_first_half")
    assert len(first) == 50_000 and (first.properties["half"] == 1).all()


def test_features_and_properties():
    mols = qm9.load_qm9("all")
    z, x = mols[0]  # methane, GDB index 1
    assert z.tolist() == [6, 1, 1, 1, 1]
    assert np.allclose(x[1], [0.002150416, -0.0060313176, 0.0019761204], atol=1e-6)
    assert mols.properties["index"][0] == 1
    oh = qm9.one_hot(mols.subset([0]))
    assert oh.shape == (5, 5) and oh[0].tolist() == [0, 1, 0, 0, 0]
    p = mols.properties
    assert np.isclose(p["gap"][0], 0.5048 * 27.2114)  # Hartree -> eV as EDM
    assert np.isclose(p["alpha"][0], 13.21) and np.isclose(p["Cv"][0], 6.469) and p["mu"][0] == 0.0
    assert np.allclose(p["gap"], p["lumo"] - p["homo"], atol=5e-3)  # 4-decimal Hartree inputs
    assert set(QM9_VOCAB.encode(mols.numbers).tolist()) == {0, 1, 2, 3, 4}


def test_no_hydrogen_variant():
    h, noh = qm9.load_qm9("test"), qm9.load_qm9("test", remove_h=True)
    assert len(h) == len(noh)
    assert (noh.numbers != 1).all()
    assert (noh.n_atoms == np.bincount(h.molecule_index, h.numbers != 1, len(h))).all()
    assert noh.n_atoms.max() == 9
