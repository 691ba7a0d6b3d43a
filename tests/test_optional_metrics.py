"""Optional metrics: PoseBusters checks and GFN2-xTB energies/strain (skipped without the extras)."""

import math
import sys

import numpy as np
import pytest
from ase import units
from rdkit import Chem
from rdkit.Chem import AllChem

from moldiff.metrics.posebusters_checks import _bust_one, _check_all, _Worker, posebusters_summary
from moldiff.metrics.xtb_energy import strain_energies, xtb_energy_gradient, xtb_relax

# Water at its experimental gas-phase geometry (Å).
WATER_Z = np.array([8, 1, 1])
WATER_POS = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


def embedded(smiles: str, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


def scaled(mol: Chem.Mol, factor: float) -> Chem.Mol:
    out = Chem.Mol(mol)
    conf = out.GetConformer()
    for i, p in enumerate(conf.GetPositions() * factor):
        conf.SetAtomPosition(i, p.tolist())
    return out


def atoms_of(mol: Chem.Mol):
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), mol.GetConformer().GetPositions()


# --- PoseBusters ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_mols():
    pytest.importorskip("posebusters")
    return [embedded(s) for s in ("CCO", "Oc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "C1CCCCC1")]


def test_posebusters_embedded_molecules_pass(good_mols):
    summary = posebusters_summary(good_mols)
    assert summary["n_checked"] == 4 and summary["n_failed_to_check"] == 0
    assert summary["pb_valid"] >= 0.75
    checks = {k: v for k, v in summary.items() if k not in {"pb_valid", "n_checked", "n_failed_to_check", "n_timed_out", "failures"}}
    assert {"bond_lengths", "internal_steric_clash", "internal_energy"} <= checks.keys()
    assert all(rate >= 0.75 for rate in checks.values())


def test_posebusters_crushed_geometry_fails(good_mols):
    summary = posebusters_summary([scaled(good_mols[2], 0.5)])
    assert summary["n_checked"] == 1
    assert summary["bond_lengths"] == 0.0 and summary["pb_valid"] == 0.0
    assert summary["sanitization"] == 1.0  # the graph is fine, only the geometry is broken


def test_posebusters_is_quiet(capfd):
    pytest.importorskip("posebusters")
    salt = embedded("[Na+].[Cl-]")  # PoseBusters logs "no bonds" and "average energy of 0" warnings for this
    summary = posebusters_summary([salt])
    assert summary["n_checked"] == 1 and summary["all_atoms_connected"] == 0.0
    captured = capfd.readouterr()  # file descriptors, not sys.std*: the checks run in a worker process
    assert captured.out == "" and captured.err == ""


def test_posebusters_bad_inputs_are_counted(good_mols):
    no_conformer = Chem.AddHs(Chem.MolFromSmiles("CCN"))
    nan_coords = scaled(good_mols[0], float("nan"))
    summary = posebusters_summary([good_mols[0], None, no_conformer, nan_coords])
    assert summary["n_checked"] == 1 and summary["n_failed_to_check"] == 3 and summary["n_timed_out"] == 0
    assert summary["failures"] == [(1, "no molecule"), (2, "no conformer"), (3, "non-finite coordinates")]
    assert summary["pb_valid"] == 1.0


def test_posebusters_exception_is_one_molecules_outcome(good_mols):
    class Boom:  # stands in for a PoseBusters crash on one molecule
        def bust(self, mol_pred):
            raise RuntimeError("kaboom")

    assert _bust_one(Boom(), good_mols[0]) == (None, "RuntimeError: kaboom")


def test_posebusters_worker_death_is_counted_and_replaced(good_mols):
    pytest.importorskip("posebusters")
    worker = _Worker("mol", timeout=None)
    try:
        row, reason = _check_all(good_mols, [0], [worker])[0]
        assert reason is None and row["bond_lengths"] is True
        worker.proc.kill()  # a crash in RDKit's C++ looks like this from the parent
        worker.proc.join()
        assert _check_all(good_mols, [1], [worker])[1] == (None, "PoseBusters worker died")
        row, reason = _check_all(good_mols, [1], [worker])[1]  # a fresh worker takes the next molecule
        assert reason is None and row["bond_lengths"] is True
    finally:
        worker.close()
    assert worker.proc is None


# A real GEOM-Drugs test molecule (108 atoms with H, nine stereocentres): PoseBusters' energy check takes
# about 19 s on one thread for it, 10x this test's limit.
RIFAMYCIN_LIKE = ("CO[C@H]1/C=C\\O[C@@]2(C)Oc3c(C)c(O)c4c(O)c(c5c(nc6cc(C)ccn65)c4c3C2=O)NC(=O)/C(C)=C\\C=C/"
                  "[C@H](C)[C@H](O)[C@@H](C)[C@@H](O)[C@@H](C)[C@H](OC(C)=O)[C@@H]1C")


def test_posebusters_slow_molecule_is_timed_out_and_the_next_checked(good_mols):
    slow = embedded(RIFAMYCIN_LIKE)
    summary = posebusters_summary([slow, good_mols[0]], timeout=2.0)
    assert summary["failures"] == [(0, "timed out after 2 s")]
    assert summary["n_timed_out"] == 1 and summary["n_failed_to_check"] == 1
    assert summary["n_checked"] == 1 and summary["pb_valid"] == 1.0  # a fresh worker checked the next one


def test_posebusters_workers_side_by_side_give_the_same_figures(good_mols):
    # While one worker sits on the slow molecule until its deadline, the other checks the rest.
    mols = [embedded(RIFAMYCIN_LIKE), *good_mols, None]
    one, two = (posebusters_summary(mols, timeout=2.0, workers=w) for w in (1, 2))
    assert one == two
    assert one["failures"] == [(0, "timed out after 2 s"), (5, "no molecule")] and one["n_checked"] == 4


def test_posebusters_timeout_and_workers_are_checked(good_mols):
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0 \(null: no limit\), got 0"):
        posebusters_summary(good_mols, timeout=0)
    with pytest.raises(ValueError, match="workers must be a whole number >= 1, got 0"):
        posebusters_summary(good_mols, workers=0)


def test_posebusters_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "posebusters", None)
    with pytest.raises(ImportError, match="pip install posebusters"):
        posebusters_summary([])


# --- GFN2-xTB ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tblite():
    return pytest.importorskip("tblite.interface")


def test_xtb_water_energy(tblite):
    energy, gradient = xtb_energy_gradient(WATER_Z, WATER_POS)
    assert energy == pytest.approx(-5.0704, abs=1e-3)  # GFN2-xTB, Hartree
    assert gradient.shape == (3, 3)
    assert np.abs(gradient.sum(axis=0)).max() < 1e-8  # no net force on an isolated molecule


def test_xtb_gradient_matches_finite_difference(tblite):
    # A distorted geometry so the gradient is large; the step is taken in Bohr to check the Å <-> Bohr conversion.
    pos = WATER_POS + np.array([[0.0, 0.05, 0.0], [0.0, 0.1, 0.05], [0.02, -0.1, -0.05]])
    _, gradient = xtb_energy_gradient(WATER_Z, pos)
    assert np.abs(gradient).max() > 1e-2
    h = 1e-3  # Bohr
    fd = np.zeros_like(pos)
    for i in range(3):
        for k in range(3):
            d = np.zeros_like(pos)
            d[i, k] = h * units.Bohr  # in Å
            fd[i, k] = (xtb_energy_gradient(WATER_Z, pos + d)[0] - xtb_energy_gradient(WATER_Z, pos - d)[0]) / (2 * h)
    np.testing.assert_allclose(gradient, fd, atol=1e-5)


def test_xtb_relaxation_lowers_energy(tblite):
    rng = np.random.default_rng(0)
    ethanol_z, ethanol_pos = atoms_of(embedded("CCO"))
    distorted = [(WATER_Z, WATER_POS * 1.15), (ethanol_z, ethanol_pos + rng.normal(0.0, 0.1, ethanol_pos.shape))]
    relaxed, e_before, e_after = xtb_relax(*distorted[0])
    assert e_after < e_before and relaxed.shape == (3, 3)
    assert np.linalg.norm(relaxed[1] - relaxed[0]) == pytest.approx(0.96, abs=0.03)  # O-H bond back near 0.96 Å

    result = strain_energies(distorted, steps=50)
    assert result["n_evaluated"] == 2 and result["n_failed"] == 0
    assert all(s > 0 for s in result["strain_kcal_mol"])
    assert result["median"] == pytest.approx(float(np.median(result["strain_kcal_mol"])))


def test_xtb_failures_are_counted(tblite):
    methyl = np.array([[0.0, 0.0, 0.0], [1.08, 0.0, 0.0], [-0.54, 0.93, 0.0], [-0.54, -0.93, 0.0]])
    molecules = [
        (WATER_Z, WATER_POS),
        (np.array([6, 6]), np.zeros((2, 3))),  # two atoms on top of each other
        (np.array([6, 1, 1, 1]), methyl),  # odd electron count: the uhf=0 below is impossible
    ]
    result = strain_energies(molecules, steps=5, uhf=0)
    assert result["n_evaluated"] == 1 and result["n_failed"] == 2
    assert [i for i, _ in result["failures"]] == [1, 2]
    assert len(result["strain_kcal_mol"]) == 3 and math.isnan(result["strain_kcal_mol"][1])
    # The default uhf gives the methyl radical its unpaired electron.
    assert strain_energies(molecules[2:], steps=5)["n_failed"] == 0
    # One BFGS step cannot relax a stretched water: kept as unconverged, or failed when convergence is required.
    stretched = [(WATER_Z, WATER_POS * 1.15)]
    assert strain_energies(stretched, steps=1)["n_unconverged"] == 1
    strict = strain_energies(stretched, steps=1, require_converged=True)
    assert strict["n_failed"] == 1 and strict["n_evaluated"] == 0 and math.isnan(strict["median"])


def test_xtb_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    with pytest.raises(ImportError, match="pip install tblite"):
        xtb_energy_gradient(WATER_Z, WATER_POS)


def test_strain_uses_each_molecules_total_charge(tblite, monkeypatch):
    """An ion is computed at its own charge (the set's ``charge`` property, a triple's third
    field), not at 0: methylammonium at charge 0 would be a radical with an electron too many."""
    import moldiff.chem.xtb as xe
    from moldiff.data.elements import vocabulary
    from moldiff.data.molecules import MoleculeSet
    from moldiff.metrics.evaluate import evaluate

    seen, real_init = [], xe.XTB.__init__

    def spy(self, numbers, positions, charge=0, uhf=None, accuracy=1.0):
        seen.append((len(numbers), charge))
        real_init(self, numbers, positions, charge, uhf, accuracy)

    monkeypatch.setattr(xe.XTB, "__init__", spy)
    ammonium = atoms_of(embedded("C[NH3+]"))  # 8 atoms, 18 electrons at +1
    mols = MoleculeSet.from_list([ammonium, (WATER_Z, WATER_POS)], charge=[1.0, np.nan])  # NaN: not given
    r = strain_energies(mols, steps=2)
    assert seen == [(8, 1), (3, 0)] and r["charge"] == [1, 0] and r["n_failed"] == 0
    seen.clear()
    r = strain_energies([(*ammonium, 1), (*ammonium, 0.5), ammonium], steps=1)
    assert seen == [(8, 1), (8, 0)] and r["charge"] == [1, None, 0]  # 0.5 e: that molecule fails, counted
    assert [i for i, _ in r["failures"]] == [1] and "whole number" in r["failures"][0][1]
    seen.clear()
    r = evaluate(mols.subset([0]), vocabulary("geom"), protocols=(), workers=1, xtb=1)  # what metrics.json gets
    assert seen == [(8, 1)] and r["xtb"]["charge"] == [1]


def test_strain_uses_the_charge_the_corrected_protocol_found(tblite, monkeypatch):
    """Input without charges (XYZ, generated molecules): xTB gets the total charge at which the
    corrected protocol found a valid structure, so methylammonium is computed at +1, not as a radical."""
    import moldiff.chem.xtb as xe
    from moldiff.data.elements import vocabulary
    from moldiff.data.molecules import MoleculeSet
    from moldiff.metrics.evaluate import evaluate

    seen, real_init = [], xe.XTB.__init__

    def spy(self, numbers, positions, charge=0, uhf=None, accuracy=1.0):
        seen.append((len(numbers), charge))
        real_init(self, numbers, positions, charge, uhf, accuracy)

    monkeypatch.setattr(xe.XTB, "__init__", spy)
    ammonium = atoms_of(embedded("C[NH3+]"))
    mols = MoleculeSet.from_list([ammonium, (WATER_Z, WATER_POS)])  # no charge property
    r = evaluate(mols, vocabulary("geom"), protocols=("corrected",), workers=1, xtb=2)
    assert r["corrected"]["molecule_stability"] == 1.0
    assert seen[0] == (8, 1) and seen[1] == (3, 0) and r["xtb"]["charge"] == [1, 0] and r["xtb"]["n_charge_from_search"] == 1
    seen.clear()
    r = evaluate(mols, vocabulary("geom"), protocols=("edm",), workers=1, xtb=1)  # no search ran: charge 0, as before
    assert seen[0] == (8, 0)
