"""Does the evaluation call real drug-like molecules valid? Real GEOM-Drugs conformers, and RDKit
conformers of the GEOM-Drugs test SMILES, through both protocols.

For the first ``--n`` of the 1000 GEOM-Drugs test SMILES (GeoMol's ``test_smiles.csv``, in
``../shared/data/geom_drugs/``) one conformer is embedded per molecule (ETKDGv3, seeded) and
relaxed with MMFF94; molecules RDKit cannot embed or has no MMFF parameters for are skipped and
counted. The conformers are written as an SDF with formal charges (the charge is read from it) and
as an XYZ without (the corrected protocol must search the charge), and both files are evaluated,
beside the 503 real GEOM-Drugs conformers of the shared SDF.

python benchmarks/geom_real_validity.py [--n 1000] [--seed 0] [--out outputs/geom_real_validity]
"""

import argparse
import csv
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from moldiff.data import MoleculeSet
from moldiff.data.elements import vocabulary
from moldiff.data.report import InputReport
from moldiff.data.sources import load_source
from moldiff.io.writers import write_sdf, write_xyz
from moldiff.metrics.evaluate import evaluate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geom_drugs"


def embed(args):
    """(molecule block with formal charges, None) or (None, why it was skipped)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    smiles, seed = args
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, "unparsable SMILES"
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        return None, "embedding failed"
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return None, "no MMFF parameters"
    not_converged = AllChem.MMFFOptimizeMolecule(mol, maxIters=5000) != 0
    return Chem.MolToMolBlock(mol), "not converged" if not_converged else None


def build(n: int, seed: int, out: Path) -> dict:
    from rdkit import Chem

    with open(SHARED / "geom_drugs_test_1000_smiles.csv") as f:
        smiles = [row["smiles"] for row in csv.DictReader(f)][:n]
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        done = list(pool.map(embed, [(s, seed) for s in smiles], chunksize=8))
    skipped: dict[str, int] = {}
    mols, names = [], []
    for k, (block, note) in enumerate(done):
        if block is None:
            skipped[note] = skipped.get(note, 0) + 1
            continue
        mols.append(Chem.MolFromMolBlock(block, removeHs=False))
        names.append(f"geom_test_{k}")
    write_sdf(out / "rdkit_mmff.sdf", mols, names)
    xyz = MoleculeSet.from_list([([a.GetAtomicNum() for a in m.GetAtoms()], m.GetConformer().GetPositions()) for m in mols])
    write_xyz(out / "rdkit_mmff.xyz", xyz, names)
    charged = sum(Chem.GetFormalCharge(m) != 0 for m in mols)
    return {
        "smiles": len(smiles), "embedded": len(mols), "skipped": skipped, "net_charged": int(charged),
        "mmff_not_converged": sum(note == "not converged" for _, note in done), "seconds": time.perf_counter() - t,
    }


def score(path: Path) -> dict:
    report = InputReport()
    mols, names, _ = load_source(str(path), report)
    t = time.perf_counter()
    r = evaluate(mols, vocabulary("geom"), report, names=names, workers=2)
    e, c = r["edm"], r["corrected"]
    return {
        "n": r["n_molecules"], "seconds": time.perf_counter() - t,
        "corrected": {k: c[k] for k in ("atom_stability", "molecule_stability", "validity")},
        "edm": {k: e[k] for k in ("atom_stability", "molecule_stability", "validity")},
        "charge": c.get("charge"), "failures": c.get("perception_failures", {}),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="first n of the 1000 test SMILES")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/geom_real_validity"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"build": build(args.n, args.seed, args.out)}
    print(f"built: {json.dumps(results['build'])}")
    inputs = {
        "GEOM-Drugs, 503 real conformers (SDF)": SHARED / "geom_drugs_10_molecules_503_conformers.sdf",
        f"RDKit ETKDG+MMFF, {args.n} test SMILES (SDF, charges given)": args.out / "rdkit_mmff.sdf",
        f"RDKit ETKDG+MMFF, {args.n} test SMILES (XYZ, charges searched)": args.out / "rdkit_mmff.xyz",
    }
    print("| molecules | n | corrected valid / mol. stable / atom stable % | EDM atom / mol. stable / valid % | charge | s |")
    print("|---|---|---|---|---|---|")
    for label, path in inputs.items():
        s = score(path)
        results[label] = s
        c, e = s["corrected"], s["edm"]
        print(
            f"| {label} | {s['n']} | {100 * c['validity']:.1f} / {100 * c['molecule_stability']:.1f} / {100 * c['atom_stability']:.2f} "
            f"| {100 * e['atom_stability']:.1f} / {100 * e['molecule_stability']:.1f} / {100 * e['validity']:.1f} "
            f"| {s['charge']} | {s['seconds']:.0f} |"
        )
        if s["failures"]:
            print(f"  corrected-protocol failures: {s['failures']}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.out / 'results.json'}")
