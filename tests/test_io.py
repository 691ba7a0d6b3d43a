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


def _nitromethane_and_a_broken_one() -> MoleculeSet:
    """Nitromethane (charges that EDM's bonds cannot express), and ethanol without its last H: an
    odd electron count, no structure."""
    z, x = embedded("CCO")
    return MoleculeSet.from_list([embedded("C[N+](=O)[O-]"), (z[:-1], x[:-1])])


def test_to_rdkit_gives_a_writable_molecule_for_every_entry(tmp_path):
    """Issue 32: to_rdkit returned unsanitised molecules, and bonds="perceive" None entries that
    broke write_sdf. The default is the perceived structure where there is one, EDM's bonds
    otherwise, and every molecule it returns can be written as SMILES and SDF."""
    from rdkit import Chem

    from moldiff.io.convert import to_rdkit

    mols = _nitromethane_and_a_broken_one()
    best = to_rdkit(mols)
    assert [m is None for m in to_rdkit(mols, bonds="perceive")] == [False, True]
    assert Chem.MolToSmiles(Chem.RemoveHs(best[0])) == "C[N+](=O)[O-]"
    for mol in (*best, *to_rdkit(mols, bonds="edm")):
        assert Chem.MolToSmiles(mol)
    write_sdf(tmp_path / "x.sdf", best)
    assert (tmp_path / "x.sdf").read_text().count("$$$$") == 2


def test_to_rdkit_uses_a_sets_own_bonds_and_charges():
    from rdkit import Chem

    from moldiff.io.convert import to_rdkit

    z, x = embedded("C[N+](=O)[O-]")
    mol = Chem.AddHs(Chem.MolFromSmiles("C[N+](=O)[O-]"))  # embedded() keeps RDKit's atom order
    bonds = [(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), int(b.GetBondTypeAsDouble()))
             for b in mol.GetBonds()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    own = MoleculeSet(z, x, np.array([0, len(z)]), charges=charges, bonds=bonds, bond_offsets=np.array([0, len(bonds)]))
    out = to_rdkit(own)[0]  # bonds="own" by default for a set that carries bonds
    assert [a.GetFormalCharge() for a in out.GetAtoms()] == charges
    assert Chem.MolToSmiles(Chem.RemoveHs(out)) == "C[N+](=O)[O-]"


def test_write_sdf_refuses_bad_entries_before_writing_anything(tmp_path):
    """Issue 32: [mol, None] raised Boost's ArgumentError halfway, with the RDKit writer left open."""
    from moldiff.io.convert import to_rdkit

    mol = to_rdkit(_nitromethane_and_a_broken_one())[0]
    with pytest.raises(ValueError, match=r"write_sdf: entries \[1\] of 2 are not RDKit molecules"):
        write_sdf(tmp_path / "x.sdf", [mol, None])
    with pytest.raises(ValueError, match="1 names for 2 molecules"):
        write_sdf(tmp_path / "x.sdf", [mol, mol], ["a"])

    class Unprintable:
        def __str__(self):
            raise RuntimeError("no text")

    with pytest.raises(RuntimeError, match="no text"):  # an error while writing: nothing left behind
        write_sdf(tmp_path / "x.sdf", [mol, mol], properties=[{"p": 1}, {"p": Unprintable()}])
    assert list(tmp_path.iterdir()) == []
    write_sdf(tmp_path / "y.sdf", [mol])  # and the next write works
    assert (tmp_path / "y.sdf").read_text().count("$$$$") == 1
