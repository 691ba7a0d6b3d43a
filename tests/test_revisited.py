"""The GEOM-Drugs Revisited protocol (issue 31): the paper's valency table on hand-made graphs,
validity and connectivity, the geometry deviations on known distortions, bad input counted, and
the xTB part on small molecules (agreement with the paper's code: benchmarks/revisited_crosscheck.py)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms

from moldiff.data.elements import GEOM_VOCAB
from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.data.user import read_molecules
from moldiff.metrics.evaluate import evaluate
from moldiff.metrics.revisited import angle_triples, atom_stability, geometry_deviations, graph_part, torsion_quads

DATA = Path(__file__).parent / "data"
CODE = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: 4}


def graph(smiles: str, kekule: bool = True):
    """(numbers, charges, bonds) of a SMILES with explicit H, Kekulé or aromatic bond codes."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if kekule:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), CODE[b.GetBondType()]) for b in mol.GetBonds()]
    return numbers, charges, bonds


@pytest.mark.parametrize("smiles", ["c1ccccc1", "c1ccncc1", "c1ccc2ccccc2c1", "c1cc[nH]c1", "C[NH3+]", "c1cc[nH+]cc1",
                                    "C[N+](=O)[O-]", "CC(=O)[O-]", "CS(=O)(=O)C", "c1ccsc1"])
@pytest.mark.parametrize("kekule", [True, False])
def test_real_molecules_are_stable_kekule_or_aromatic(smiles, kekule):
    assert atom_stability(*graph(smiles, kekule)).all()


def test_aromatic_pairs_are_counted_apart_from_the_other_bonds():
    numbers, charges, bonds = graph("c1ccc2ccccc2c1", kekule=False)  # naphthalene: fusion C has 3 aromatic bonds, no H
    assert atom_stability(numbers, charges, bonds).all()
    # a fusion carbon given an H as well: (3 aromatic, 1) is not in the table
    fusion = next(i for i in range(10) if sum(i in b[:2] for b in bonds if b[2] == 4) == 3)
    bonds = bonds + [(fusion, len(numbers), 1)]
    ok = atom_stability(numbers + [1], charges + [0], bonds)
    assert not ok[fusion] and ok.sum() == len(ok) - 1  # the extra H itself has valence 1: fine


def test_charged_nitrogen_needs_its_charge():
    numbers, charges, bonds = graph("C[NH3+]")
    n = numbers.index(7)
    assert atom_stability(numbers, charges, bonds)[n]
    charges[n] = 0  # a neutral N with four bonds
    assert not atom_stability(numbers, charges, bonds)[n]
    charges[n] = 1
    assert not atom_stability(numbers, charges, bonds[:-1])[n]  # an H short: N+ with valence 3 is not in the table


def test_wrong_valences_and_missing_table_entries_are_unstable():
    numbers, charges, bonds = graph("CC")
    h = next(b for b in bonds if numbers[b[1]] == 1)
    ok = atom_stability(numbers, charges, [b for b in bonds if b != h])  # a carbon with valence 3, neutral
    assert not ok[h[0]] and ok.sum() == len(ok) - 2  # and the H left without a bond
    ok = atom_stability(numbers, charges, [(0, 1, 2) if b[:2] == (0, 1) else b for b in bonds])  # C=C with 3 H each: 5
    assert not ok[0] and not ok[1]
    assert not atom_stability([6], [-2], [])[0]  # (C, -2) is not in the table at all
    assert not atom_stability([33], [0], [])[0]  # nor arsenic


def _sdf(path: Path, mols) -> Path:
    path.write_text("".join(Chem.MolToMolBlock(m) + "$$$$\n" for m in mols))
    return path


def _conformer(smiles: str, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


def test_validity_and_connectivity_of_a_two_piece_record(tmp_path):
    pieces = Chem.CombineMols(_conformer("CCO"), _conformer("O"))  # ethanol and water in one record
    sdf = _sdf(tmp_path / "two.sdf", [pieces, _conformer("c1ccncc1")])
    mols, _ = read_molecules(sdf)
    r = graph_part(mols)
    assert (r["validity"], r["valid_and_connected"], r["molecule_stability"], r["atom_stability"]) == (1.0, 0.5, 1.0, 1.0)
    assert r["per_molecule"]["valid_and_connected"] == [False, True]
    via_evaluate = evaluate(mols, GEOM_VOCAB, protocols=("revisited",))["revisited"]
    assert via_evaluate["valid_and_connected"] == 0.5 and "per_molecule" not in via_evaluate


def test_aromatic_records_sanitise_as_the_file_would(tmp_path):
    good = _conformer("c1ccncc1")
    chain = Chem.RWMol(good)  # one ring bond single: a Kekulé chain exists, but its ends are not in the table
    b = next(b for b in chain.GetBonds() if b.GetIsAromatic())
    b.SetBondType(Chem.BondType.SINGLE)
    b.SetIsAromatic(False)
    odd = Chem.RWMol(_conformer("c1cc[nH]c1"))  # pyrrole without its N-H: five aromatic atoms, no Kekulé structure
    odd.RemoveAtom(next(a.GetIdx() for a in odd.GetAtoms() if a.GetAtomicNum() == 1 and a.GetNeighbors()[0].GetAtomicNum() == 7))
    path = tmp_path / "aromatic.sdf"
    path.write_text("".join(Chem.MolToMolBlock(m, kekulize=False) + "$$$$\n" for m in (good, chain, odd)))
    mols, _ = read_molecules(path)
    assert (mols.bonds[:, 2] == 4).any()
    r = graph_part(mols)
    assert r["per_molecule"]["valid"] == [True, True, False]
    # stability reads the table only: the aromatic N with no H is an allowed (2, 0), so the record
    # is "stable" though invalid; the chain's two ends, (1 aromatic, 2), are not allowed
    assert r["per_molecule"]["stable"] == [True, False, True]


def test_bad_records_count_as_failures_and_bond_less_input_is_refused(tmp_path):
    sdf = tmp_path / "mixed.sdf"
    sdf.write_text(Chem.MolToMolBlock(_conformer("CCO")) + "$$$$\nnot a molecule\n$$$$\n")
    report = InputReport()
    mols, names = read_molecules(sdf, report)
    r = evaluate(mols, GEOM_VOCAB, report, protocols=("revisited",), names=names)
    assert r["n_molecules"] == 2 and r["revisited"]["molecule_stability"] == 0.5 and r["revisited"]["valid_and_connected"] == 0.5
    assert r["input"]["n_rejected"] == 1
    xyz = MoleculeSet.from_list([(np.array([6, 1, 1, 1, 1]), np.random.default_rng(0).normal(size=(5, 3)))])
    with pytest.raises(ValueError, match="carries none"):
        evaluate(xyz, GEOM_VOCAB, protocols=("revisited",))


# ---------------------------------------------------------------- geometry deviations


def _graph_and_positions(mol):
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), CODE[b.GetBondType()]) for b in mol.GetBonds()])
    return [a.GetAtomicNum() for a in mol.GetAtoms()], bonds, mol.GetConformer().GetPositions()


def test_a_stretched_bond_moves_only_that_bond():
    numbers, bonds, x = _graph_and_positions(_conformer("CCCC"))
    c, h = next((b[0], b[1]) for b in bonds if numbers[b[1]] == 1)
    y = x.copy()
    y[h] += 0.1 * (x[h] - x[c]) / np.linalg.norm(x[h] - x[c])  # 0.1 Å further along the bond: no angle or torsion moves
    d = geometry_deviations(numbers, bonds, x, y)
    assert np.isclose(d["bond_length"].max(), 0.1) and np.sum(d["bond_length"] > 1e-9) == 1
    assert d["bond_angle"].max() < 1e-6 and d["torsion"].max() < 1e-6


def test_a_rotated_torsion_moves_only_the_torsions_about_that_bond():
    mol = _conformer("CCCC")
    numbers, bonds, x = _graph_and_positions(mol)
    rotated = Chem.Mol(mol)
    rdMolTransforms.SetDihedralDeg(rotated.GetConformer(), 0, 1, 2, 3, rdMolTransforms.GetDihedralDeg(mol.GetConformer(), 0, 1, 2, 3) + 30)
    d = geometry_deviations(numbers, bonds, x, rotated.GetConformer().GetPositions())
    q = torsion_quads(len(numbers), bonds)
    about = np.array([{j, k} == {1, 2} for _, j, k, _ in q])
    assert np.allclose(d["torsion"][about], 30) and d["torsion"][~about].max() < 1e-6
    assert d["bond_length"].max() < 1e-9 and d["bond_angle"].max() < 1e-6


def test_torsions_wrap_and_match_rdkit():
    mol = _conformer("CC(=O)NC1CCCC1", seed=3)
    numbers, bonds, x = _graph_and_positions(mol)
    y = x + np.random.default_rng(0).normal(scale=0.3, size=x.shape)
    q = torsion_quads(len(numbers), bonds)
    other = Chem.Mol(mol)
    for i, p in enumerate(y.tolist()):
        other.GetConformer().SetAtomPosition(i, p)
    expected = []
    for i, j, k, l in q.tolist():
        delta = abs(rdMolTransforms.GetDihedralDeg(mol.GetConformer(), i, j, k, l) - rdMolTransforms.GetDihedralDeg(other.GetConformer(), i, j, k, l))
        expected.append(min(delta, 360 - delta))
    d = geometry_deviations(numbers, bonds, x, y)
    assert np.allclose(d["torsion"], expected, atol=1e-6) and d["torsion"].max() <= 180


def test_which_angles_and_torsions_are_counted():
    numbers, _, bonds = graph("CC#N")  # no torsion about or next to the triple bond's atoms
    assert len(torsion_quads(len(numbers), bonds)) == 0
    numbers, _, bonds = graph("CC")  # ethane: 3 x 3 H-C-C-H torsions; each C has 4 bonds, 6 angles
    assert len(torsion_quads(len(numbers), bonds)) == 9 and len(angle_triples(len(numbers), bonds)) == 12
    numbers, _, bonds = graph("C1CC1")  # cyclopropane: i == l around a three-ring is skipped
    q = torsion_quads(len(numbers), bonds)
    assert len(q) and (q[:, 0] != q[:, 3]).all()


# ---------------------------------------------------------------- xTB


def test_relaxation_gives_positive_strain_and_deviations(tmp_path):
    pytest.importorskip("tblite.interface")
    mol = _conformer("CCO")
    conf = mol.GetConformer()
    for i, p in enumerate((conf.GetPositions() + np.random.default_rng(1).normal(scale=0.05, size=(9, 3))).tolist()):
        conf.SetAtomPosition(i, p)
    mols, _ = read_molecules(_sdf(tmp_path / "e.sdf", [mol]))
    r = evaluate(mols, GEOM_VOCAB, protocols=("revisited",), workers=1, revisited_xtb=1)["revisited"]["xtb"]
    assert r["n_relaxed"] == 1 and r["n_failed"] == 0 and r["delta_e_relax_kcal_mol"]["median"] > 0.5
    assert r["bond_length_deviation_angstrom"]["n"] == 8 and r["bond_length_deviation_angstrom"]["mean"] > 0.005


def test_evaluate_cli_prints_the_revisited_column_and_xtb_line(tmp_path):
    import subprocess
    import sys

    sdf = _sdf(tmp_path / "m.sdf", [_conformer("CCO"), _conformer("c1ccncc1")])
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, str(root / "scripts" / "evaluate.py"), f"input={sdf}", "reference=null", "novelty=null",
            "protocols=[revisited]", f"output={tmp_path / 'm.json'}"]
    p = subprocess.run(args, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert "valid & connected" in p.stdout and "GEOM-Drugs Revisited xTB" in p.stdout and "not computed" in p.stdout
    assert json.loads((tmp_path / "m.json").read_text())["revisited"]["valid_and_connected"] == 1.0
    p = subprocess.run(args[:-2] + ["protocols=[edm]", "revisited_xtb=2", f"output={tmp_path / 'n.json'}"], capture_output=True,
                       text=True, check=False)
    assert p.returncode != 0 and "revisited_xtb" in p.stderr


@pytest.mark.slow
def test_real_geom_conformers_are_xtb_minima(tmp_path):
    """GEOM-Drugs conformers are GFN2-xTB minima: the converged relaxation must find ΔE ~ 0 for all."""
    pytest.importorskip("tblite.interface")
    sdf = tmp_path / "geom.sdf"
    with gzip.open(DATA / "geom_drugs_503_conformers.sdf.gz", "rb") as f:
        sdf.write_bytes(f.read())
    mols, _ = read_molecules(sdf)
    keep = np.arange(0, len(mols), 50)  # 11 conformers of all 10 molecules
    x = evaluate(mols.subset(keep), GEOM_VOCAB, protocols=("revisited",), workers=2, revisited_xtb=len(keep))["revisited"]["xtb"]
    assert x["n_failed"] == 0 and x["delta_e_relax_kcal_mol"]["mean"] < 0.05 and x["bond_length_deviation_angstrom"]["mean"] < 1e-3
