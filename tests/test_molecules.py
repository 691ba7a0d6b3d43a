import numpy as np
import pytest

from moldiff.data import MoleculeSet, InputReport, QM9_VOCAB


def _toy():
    return MoleculeSet.from_list(
        [([6, 1], np.zeros((2, 3))), ([8], np.ones((1, 3))), ([7, 7, 7], np.arange(9).reshape(3, 3))],
        score=np.array([1.0, 2.0, 3.0]),
    )


def test_subset_select_and_roundtrip(tmp_path):
    m = _toy()
    s = m.subset([2, 0])
    assert s.n_atoms.tolist() == [3, 2] and s.numbers.tolist() == [7, 7, 7, 6, 1]
    assert s.properties["score"].tolist() == [3.0, 1.0]
    assert m.subset(np.array([False, True, False])).numbers.tolist() == [8]
    noh = m.select_atoms(m.numbers != 1)
    assert noh.n_atoms.tolist() == [1, 1, 3]
    m.save(tmp_path / "m.npz")
    back = MoleculeSet.load(tmp_path / "m.npz")
    assert (back.numbers == m.numbers).all() and np.array_equal(back.positions, m.positions)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.npz"]  # no temp file left behind
    c = m.centered()
    assert np.allclose(c[2][1].mean(0), 0, atol=1e-6)


def test_checked_counts_every_reason():
    pos_nan = np.zeros((2, 3))
    pos_nan[1, 0] = np.nan
    m = MoleculeSet.from_list(
        [([6, 1], np.eye(3)[:2]), ([6, 1], pos_nan), ([], np.zeros((0, 3))), ([6, 34], np.eye(3)[:2]), ([6], np.zeros((1, 3)))]
    )
    r = InputReport()
    ok = m.checked(QM9_VOCAB, r)
    assert len(ok) == 2
    assert dict(r.rejected) == {"nonfinite_coordinates": 1, "empty_molecule": 1, "unknown_element": 1}
    assert dict(r.flagged) == {"single_atom": 1}
    assert any("34" in e for e in r.examples)


def _bonded_pair():
    """Methanol-like (C, O, H) and formaldehyde-like (C, O) with bonds and charges."""
    a = MoleculeSet.from_list([([6, 8, 1], np.zeros((3, 3))), ([6, 8], np.ones((2, 3)))])
    return MoleculeSet(a.numbers, a.positions, a.offsets, charges=[0, 0, 0, 1, -1],
                       bonds=[(0, 1, 1), (0, 2, 1), (0, 1, 2)], bond_offsets=[0, 2, 3])


def test_bonds_and_charges_follow_subset_concatenate_and_files(tmp_path):
    mols = _bonded_pair()
    second = mols.subset([1])
    assert second.bonds.tolist() == [[0, 1, 2]] and second.charges.tolist() == [1, -1]
    both = MoleculeSet.concatenate([second, mols.subset([0])])
    assert both.bond_offsets.tolist() == [0, 1, 3] and both.bonds_of(1).tolist() == [[0, 1, 1], [0, 2, 1]]
    assert both.charges_of(0).tolist() == [1, -1]
    mols.save(tmp_path / "m.npz")
    back = MoleculeSet.load(tmp_path / "m.npz")
    assert back.bonds.tolist() == mols.bonds.tolist() and back.charges.tolist() == mols.charges.tolist()
    # a set without bonds concatenated with one that has them: bonds unknown, not invented
    assert MoleculeSet.concatenate([mols, MoleculeSet.from_list([([1], np.zeros((1, 3)))])]).bonds is None


def test_select_atoms_renumbers_bonds():
    heavy = _bonded_pair().select_atoms(np.array([True, True, False, True, True]))
    assert heavy.bonds.tolist() == [[0, 1, 1], [0, 1, 2]] and heavy.bond_offsets.tolist() == [0, 1, 2]
    # the H that is dropped was the first molecule's atom 2: its bond goes with it
    h_first = _bonded_pair().select_atoms(np.array([False, True, True, True, True]))
    assert h_first.bonds.tolist() == [[0, 1, 2]] and h_first.bond_offsets.tolist() == [0, 0, 1]


def test_bad_bonds_refused():
    a = MoleculeSet.from_list([([6, 8], np.zeros((2, 3)))])
    for bonds in ([(1, 0, 1)], [(0, 2, 1)], [(0, 1, 7)]):
        with pytest.raises(ValueError, match="bonds must be"):
            MoleculeSet(a.numbers, a.positions, a.offsets, bonds=bonds, bond_offsets=[0, 1])
    with pytest.raises(ValueError, match="come together"):
        MoleculeSet(a.numbers, a.positions, a.offsets, bonds=[(0, 1, 1)])
