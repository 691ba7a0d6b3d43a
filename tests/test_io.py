import numpy as np
import pytest

from conftest import embedded
from moldiff.data import InputReport, MoleculeSet
from moldiff.data.user import read_molecules, user_dataset
from moldiff.io import atomic_write, write_sdf, write_xyz
from moldiff.chem.determine_bonds import perceive


def test_xyz_roundtrip(tmp_path, qm9_test):
    sub = qm9_test.subset(np.arange(20))
    write_xyz(tmp_path / "a.xyz", sub)
    back, names = read_molecules(tmp_path / "a.xyz")
    assert len(back) == 20 and names[0] == "a.xyz#0"
    assert (back.numbers == sub.numbers).all()
    assert np.abs(back.positions - sub.positions).max() < 1e-5


def test_sdf_roundtrip_and_folder(tmp_path):
    mols = [perceive(*embedded(s)).mol for s in ["CCO", "c1ccccc1", "CC(=O)O"]]
    write_sdf(tmp_path / "d" / "m.sdf", mols, names=["ethanol", "benzene", "acetic"])
    write_xyz(tmp_path / "d" / "w.xyz", MoleculeSet.from_list([embedded("O")]))
    back, names = read_molecules(tmp_path / "d")
    assert names == ["ethanol", "benzene", "acetic", "w.xyz#0"]
    assert back.n_atoms.tolist() == [m.GetNumAtoms() for m in mols] + [3]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.txt") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_bad_records_are_counted(tmp_path):
    good = perceive(*embedded("CCO")).mol
    write_sdf(tmp_path / "g.sdf", [good])
    text = (tmp_path / "g.sdf").read_text()
    bad = "garbage\n  x\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\n$$$$\n"
    (tmp_path / "mixed.sdf").write_text(text + bad + text)
    r = InputReport()
    mols, _ = read_molecules(tmp_path / "mixed.sdf", r)
    assert len(mols) == 2 and r.n_records == 3 and r.rejected["unreadable_record"] == 1
    (tmp_path / "bad.xyz").write_text("3\nunknown element\nXx 0 0 0\nH 0 0 1\nH 0 1 0\n2\nok\nH 0 0 0\nH 0 0 0.74\n")
    r = InputReport()
    mols, _ = read_molecules(tmp_path / "bad.xyz", r)
    assert len(mols) == 2 and mols.numbers.tolist()[:1] == [0]  # unknown symbol -> 0, caught by checked()


def test_every_sdf_record_is_counted_even_after_unparsable_ones(tmp_path):
    good = perceive(*embedded("CCO")).mol
    write_sdf(tmp_path / "g.sdf", [good])
    text = (tmp_path / "g.sdf").read_text()
    (tmp_path / "garbage.sdf").write_text("hello\nnot a molecule\n$$$$\nsecond\nrecord\n$$$$\n")
    r = InputReport()
    mols, _ = read_molecules(tmp_path / "garbage.sdf", r)
    assert len(mols) == 0 and r.n_records == 2 and r.rejected["unreadable_record"] == 2
    (tmp_path / "mixed.sdf").write_text("a\n$$$$\nb\n$$$$\nc\n$$$$\n" + text + "no terminator\n")
    r = InputReport()
    mols, names = read_molecules(tmp_path / "mixed.sdf", r)
    assert len(mols) == 1 and r.n_records == 5 and r.rejected["unreadable_record"] == 4
    assert mols.n_atoms.tolist() == [good.GetNumAtoms()]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_molecules(tmp_path / "nope.sdf")


def test_user_dataset_checks_names_and_caches(tmp_path):
    (tmp_path / "u.xyz").write_text(
        "3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
        "2\nbad\nC 0 0 nan\nH 0 0 1\n"
        "3\nwater2\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    )
    mols, names, report = user_dataset(tmp_path / "u.xyz", save_to=tmp_path / "u.npz")
    assert names == ["u.xyz#0", "u.xyz#2"] and len(mols) == 2
    assert report.to_dict()["rejected"] == {"nonfinite_coordinates": 1}
    assert MoleculeSet.load(tmp_path / "u.npz").n_atoms.tolist() == [3, 3]
