"""``scripts/sample.py relax=mmff|xtb`` (moldiff.chem.relax): relaxed molecules go beside the raw
ones, labelled; raw files and metrics stay raw; every molecule not relaxed is counted by reason."""

import json
from pathlib import Path

import numpy as np
import pytest

from moldiff.chem import relax as RX
from moldiff.data.molecules import MoleculeSet

from conftest import embedded

ROOT = Path(__file__).resolve().parents[1]


def _strained(smiles_list, seed=0):
    """QM9-like molecules with H, their MMFF geometry shaken by 0.05 Å: something to relax."""
    rng = np.random.default_rng(seed)
    pairs = []
    for s in smiles_list:
        z, x = embedded(s)
        pairs.append((z, x + rng.normal(0, 0.05, x.shape)))
    return MoleculeSet.from_list(pairs)


def _sample(tiny_diffusion, tmp_path, monkeypatch, mols, relax):
    from hydra import compose, initialize_config_dir

    from moldiff.jobs import sample as job

    monkeypatch.setattr(job, "generate", lambda *a, **k: mols)  # known molecules instead of the tiny model's
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", [f"ckpt={tiny_diffusion}", f"n={len(mols)}", "steps=2", f"output={tmp_path}", f"relax={relax}",
                                 "evaluation.reference=null", "evaluation.novelty=null", "evaluation.workers=1"])
    return job.run_sampling(cfg, tmp_path)


def test_mmff_relaxation_is_written_beside_the_raw_samples_and_counts_the_rest(tiny_diffusion, tmp_path, monkeypatch):
    from rdkit import Chem

    good = _strained(["CCO", "c1ccoc1", "CC(=O)N"])
    junk = MoleculeSet.from_list([(np.array([6, 6, 8]), np.array([[0, 0, 0], [0.6, 0, 0], [5.0, 0, 0]]))])  # no valid structure
    mols = MoleculeSet.concatenate([good.subset([0, 1]), junk, good.subset([2])])
    metrics = _sample(tiny_diffusion, tmp_path, monkeypatch, mols, "mmff")

    raw = [m for m in Chem.SDMolSupplier(str(tmp_path / "samples.sdf"), sanitize=False, removeHs=False)]
    relaxed = list(Chem.SDMolSupplier(str(tmp_path / "samples_relaxed_mmff.sdf"), removeHs=False))
    assert [m.GetProp("_Name") for m in relaxed] == ["sample_0", "sample_1", "sample_3"]  # the junk is not among them
    for m in relaxed:
        assert m.GetProp("relaxed") == "mmff" and m.GetProp("relax_converged") == "1"
        assert float(m.GetProp("energy_after_kcal_mol")) < float(m.GetProp("energy_before_kcal_mol"))
        assert 0 < float(m.GetProp("rmsd_A")) < 0.5
    # the raw file keeps the raw coordinates (to the 4 decimals an SDF holds)
    np.testing.assert_allclose(raw[0].GetConformer().GetPositions(), mols[0][1], atol=1e-4)
    assert not np.allclose(relaxed[0].GetConformer().GetPositions(), raw[0].GetConformer().GetPositions(), atol=1e-3)
    assert [a.GetAtomicNum() for a in relaxed[2].GetAtoms()] == mols[3][0].tolist()  # atom order kept

    report = json.loads((tmp_path / "relax_mmff.json").read_text())
    assert report["n"] == 4 and report["relaxed"] == 3 and report["converged"] == 3
    assert report["not_relaxed_by_reason"] == {RX.NO_VALID_STRUCTURE: 1} and "sample_2" in report["examples"][0]
    assert "not the raw samples" in report["label"] and report["median_energy_change_kcal_mol"] < 0
    assert not [k for k in metrics if "relax" in k]  # metrics.json: the raw samples only
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_reasons_and_bad_values(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from moldiff.jobs.sample import check_relax

    def mol3d(smiles, hs=True):
        m = Chem.MolFromSmiles(smiles)
        m = Chem.AddHs(m) if hs else m
        AllChem.EmbedMolecule(m, randomSeed=0)
        return m

    no_h = mol3d("CCO", hs=False)
    bad_graph = Chem.RWMol(mol3d("CC"))
    bad_graph.GetBondWithIdx(0).SetBondType(Chem.BondType.TRIPLE)  # C#C with 3 H on each: pentavalent
    silane = mol3d("[SiH3][SiH3]")  # valid, explicit H, but is MMFF94's?
    done, rep = RX.relax_molecules([no_h, bad_graph.GetMol(), None, mol3d("CCO")], ["perceived", "model", "edm", "model"], "mmff")
    assert [k for k, _ in done] == [3]
    assert rep.rejected == {RX.IMPLICIT_H: 1, RX.GRAPH_REJECTED: 1, RX.NO_VALID_STRUCTURE: 1} and rep.n_records == 4
    done, rep = RX.relax_molecules([silane], ["perceived"], "mmff")
    assert len(done) + rep.n_rejected == 1
    with pytest.raises(ValueError, match="relax"):
        check_relax("uff")
    check_relax(None)
    check_relax("mmff")


def test_xtb_relaxation_counts_failures(monkeypatch):
    pytest.importorskip("tblite.interface")
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles("C[NH3+]"))
    AllChem.EmbedMolecule(m, randomSeed=0)
    done, rep = RX.relax_molecules([m], ["perceived"], "xtb")
    (k, r), = done
    assert rep.n_rejected == 0 and r.energy_after <= r.energy_before
    assert -9.0 * RX.KCAL_PER_HARTREE < r.energy_after < -7.0 * RX.KCAL_PER_HARTREE  # the cation's GFN2-xTB energy

    def scf_fails(*a, **k):
        raise RuntimeError("SCF not converged")

    monkeypatch.setattr(RX, "relax", scf_fails)
    done, rep = RX.relax_molecules([m], ["perceived"], "xtb")
    assert done == [] and rep.rejected == {RX.XTB_FAILED: 1} and "SCF" in rep.examples[0]
