import numpy as np

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
