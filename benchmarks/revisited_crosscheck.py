"""Cross-check moldiff's GEOM-Drugs Revisited evaluation against the paper's reference code
(isayevlab/geom-drugs-3dgen-evaluation) on the same molecules.

The molecules (one SDF, every record with bonds and formal charges, names say what each is):

* ``real``: real GEOM-Drugs conformers (CREST/GFN2-xTB), 3 of each of the 10 molecules in
  ``../shared/data/geom_drugs/``, as written there;
* ``mmff``: one ETKDG + MMFF94 conformer of each of the first GEOM-Drugs test SMILES that embed
  (at most 60 atoms, to bound the xTB time), written Kekulé;
* ``aromatic``: some of those written with aromatic bond types (the table's aromatic pairs);
* ``jitter``: other real conformers with Gaussian noise on the coordinates (σ 0.02, 0.05 or 0.1 Å);
* broken graphs: a single bond made double (``bond_order``), an ion's charge dropped
  (``charge_lost``), a bond removed (``two_pieces``), an H removed (``radical``), an aromatic ring
  with one bond made single (``aromatic_broken``).

moldiff side: ``moldiff.metrics.revisited`` (what ``scripts/evaluate.py protocols=[revisited]
revisited_xtb=N`` runs). Reference side, in a separate process that imports only the reference
checkout (``--reference``, its own interpreter with ``--reference-python``): its stability and
validity function, its xTB driver (the ``xtb`` program's ``--opt``; Debian: ``apt-get install
xtb``), its ΔE/RMSD summary and its geometry-deviation functions. The deviation functions are also
run on moldiff's relaxed geometries, which checks the definitions apart from the optimisers.

python benchmarks/revisited_crosscheck.py --reference /path/to/geom-drugs-3dgen-evaluation \
    [--reference-python /path/to/venv/bin/python] [--n-mmff 30] [--n-aromatic 5] [--workers 2] [--out outputs/revisited_crosscheck]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "geom_drugs"
RESULTS = ROOT / "benchmarks" / "results_revisited_crosscheck.json"


# ---------------------------------------------------------------- the molecules


def _embed(smiles: str, seed: int):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > 60:
        return None
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0 or not AllChem.MMFFHasAllMoleculeParams(mol):
        return None
    AllChem.MMFFOptimizeMolecule(mol, maxIters=5000)
    return mol


def _block(mol, name: str, kekulize: bool = True) -> str:
    from rdkit import Chem

    mol = Chem.Mol(mol)
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol, kekulize=kekulize) + "$$$$\n"


def build(out: Path, n_mmff: int, n_aromatic: int, seed: int = 0) -> dict:
    """Writes ``crosscheck.sdf``; returns {group: count}."""
    from rdkit import Chem

    rng = np.random.default_rng(seed)
    real = [m for m in Chem.SDMolSupplier(str(SHARED / "geom_drugs_10_molecules_503_conformers.sdf"), sanitize=False, removeHs=False)]
    by_key: dict[str, list] = {}
    for m in real:
        by_key.setdefault(m.GetProp("_Name").split()[0], []).append(m)
    blocks, groups = [], {}

    def add(group, mol, name, kekulize=True):
        blocks.append(_block(mol, name, kekulize))
        groups[group] = groups.get(group, 0) + 1

    for k, confs in enumerate(by_key.values()):
        for c in range(3):
            add("real", confs[c], f"real_{k}_{c}")
    for k, confs in enumerate(by_key.values()):  # noisy copies of the 4th and 5th conformers
        for c, sigma in ((3, 0.02), (4, 0.05), (5, 0.1)) if k < 5 else ((4, 0.05),):
            m = Chem.Mol(confs[c % len(confs)])
            conf = m.GetConformer()
            x = conf.GetPositions() + rng.normal(scale=sigma, size=(m.GetNumAtoms(), 3))
            for i, p in enumerate(x):
                conf.SetAtomPosition(i, p.tolist())
            add("jitter", m, f"jitter_{sigma}_{k}")
    with open(SHARED / "geom_drugs_test_1000_smiles.csv") as f:
        smiles = [row["smiles"] for row in csv.DictReader(f)]
    mmff = []
    for s in smiles:
        if len(mmff) == n_mmff + 30:  # 30 more to break
            break
        m = _embed(s, seed)
        if m is not None:
            mmff.append(m)
    for k, m in enumerate(mmff[:n_mmff]):
        add("mmff", m, f"mmff_{k}")
    aromatic = [m for m in mmff[:n_mmff] if m.GetRingInfo().NumRings() and any(b.GetIsAromatic() for b in m.GetBonds())]
    for k, m in enumerate(aromatic[:n_aromatic]):
        add("aromatic", m, f"aromatic_{k}", kekulize=False)
    spare = [Chem.RWMol(m) for m in mmff[n_mmff:]]
    for m in spare:
        Chem.Kekulize(m, clearAromaticFlags=True)

    def broken(group, mols, edit, count, kekulize=True):
        k = 0
        for m in mols:
            m = Chem.RWMol(m)
            if k < count and edit(m):
                add(group, m, f"{group}_{k}", kekulize)
                k += 1

    def acyclic_single(m, heavy=1):
        return next((b for b in m.GetBonds() if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()
                     and b.GetBeginAtom().GetAtomicNum() > heavy and b.GetEndAtom().GetAtomicNum() > heavy), None)

    def double_it(m):  # a heavy-atom single bond outside rings made double: a valence too high
        b = acyclic_single(m)
        return b is not None and (b.SetBondType(Chem.BondType.DOUBLE) or True)

    def drop_charge(m):  # an ion written without its charge
        a = next((a for a in m.GetAtoms() if a.GetFormalCharge()), None)
        return a is not None and (a.SetFormalCharge(0) or True)

    def cut(m):  # a heavy-atom single bond outside rings removed: two pieces
        b = acyclic_single(m)
        return b is not None and (m.RemoveBond(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) or True)

    def drop_h(m):  # one H removed: a radical
        m.RemoveAtom(max(a.GetIdx() for a in m.GetAtoms() if a.GetAtomicNum() == 1))
        return True

    def break_ring(m):  # an aromatic ring written aromatic, one of its bonds single: no Kekulé structure
        Chem.SanitizeMol(m)
        b = next((b for b in m.GetBonds() if b.GetIsAromatic()), None)
        if b is None:
            return False
        b.SetBondType(Chem.BondType.SINGLE)
        b.SetIsAromatic(False)
        return True

    broken("bond_order", spare[0:6], double_it, 4)
    broken("charge_lost", spare, drop_charge, 3)
    broken("two_pieces", spare[6:12], cut, 4)
    broken("radical", spare[12:15], drop_h, 3)
    broken("aromatic_broken", spare[15:], break_ring, 3, kekulize=False)
    (out / "crosscheck.sdf").write_text("".join(blocks))
    return groups


# ---------------------------------------------------------------- the reference, in its own process


DRIVER = r'''
import importlib.util, json, os, sys
import numpy as np
from rdkit import Chem, RDLogger
RDLogger.DisableLog("rdApp.*")
ref, sdf, ours_relaxed, work = sys.argv[1:5]
from geom_utils.molecule_stability import compute_molecules_stability
from geom_utils.utils import is_valid
from geom_utils.pair_geometry import compute_bond_lengths_diff, compute_bond_angles_diff, compute_torsion_angles_diff

def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ref, "scripts", "energy_benchmark", name + ".py"))
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod

read = lambda p: [m for m in Chem.SDMolSupplier(p, sanitize=False, removeHs=False) if m is not None]
out = {}
mols = read(sdf)
names = [m.GetProp("_Name") for m in mols]
validity, stable, n_stable, n_atoms = compute_molecules_stability(mols, aromatic=True)
out["names"] = names
out["valid_and_connected"] = validity.tolist()
out["stable"] = stable.tolist()
out["n_stable_atoms"] = n_stable.tolist()
out["n_atoms"] = n_atoms.tolist()

os.chdir(work)
if not os.path.exists("opt.sdf"):  # the xTB run is the slow part: reused when present
    load("xtb_optimization").main_fn(sdf, "opt.sdf", "init.sdf")
rmsd_energy = load("rmsd_energy")
geometry = load("compute_pair_geometry")
init, opt = read("init.sdf"), read("opt.sdf")
out["energy"] = {k: float(v) for k, v in rmsd_energy.compute_metrics_for_pairs(list(zip(read("init.sdf"), read("opt.sdf")))).items()}
out["energy_per_molecule"] = {m.GetProp("_Name"): (-float(o.GetProp("energy_gain")) if o.HasProp("energy_gain") else None, is_valid(Chem.Mol(m)))
                              for m, o in zip(read("init.sdf"), opt)}

def deviations(pairs):
    res = {}
    for kind, fn in (("bond_length", compute_bond_lengths_diff), ("bond_angle", compute_bond_angles_diff),
                     ("torsion", compute_torsion_angles_diff)):
        pooled = [d for p in pairs for diffs, _ in fn(p).values() for d in diffs]
        res[kind] = {"median": float(np.median(pooled)), "pooled_mean": float(np.mean(pooled)), "n": len(pooled)}
        # the figure the reference's script prints: per-type means weighted by counts
        res[kind]["weighted_mean"] = float(geometry.summarize_results(geometry.run_analysis(pairs, kind if kind != "torsion" else "torsion_angle")))
    return res

out["deviations"] = deviations(list(zip(init, opt)))
out["relaxed_names"] = [m.GetProp("_Name") for m in init]
by_name = {m.GetProp("_Name"): m for m in mols}
ours = read(ours_relaxed)
out["deviations_on_moldiff_geometries"] = deviations([(by_name[m.GetProp("_Name")], m) for m in ours])
print(json.dumps(out))
'''


def run_reference(ref: Path, python: str, out: Path, threads: int) -> dict:
    work = out / "reference_work"
    work.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ref), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "HOME": os.environ.get("HOME", "/tmp")}
    t = time.perf_counter()
    p = subprocess.run([python, "-c", DRIVER, str(ref), str(out / "crosscheck.sdf"), str(out / "moldiff_relaxed.sdf"), str(work)],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"the reference failed:\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - t
    return result


# ---------------------------------------------------------------- moldiff


def run_moldiff(out: Path, workers: int) -> tuple[dict, list[str]]:
    from rdkit import Chem

    from moldiff.data.report import InputReport
    from moldiff.data.user import read_molecules
    from moldiff.metrics.revisited import record_mol, revisited

    report = InputReport()
    mols, names = read_molecules(out / "crosscheck.sdf", report)
    t = time.perf_counter()
    r = revisited(mols, report.n_records, xtb=len(mols), workers=workers, names=names, per_molecule=True)
    r["seconds"] = time.perf_counter() - t
    with open(out / "moldiff_relaxed.sdf", "w") as f:  # relaxed geometries, for the reference's deviation functions
        for i, x in enumerate(r["xtb"]["per_molecule"]["relaxed_positions"]):
            if x is None or names[i] in {n for n, _ in r["xtb"]["failures"]}:
                continue
            mol = record_mol(mols, i)
            for k, p in enumerate(x.tolist()):
                mol.GetConformer().SetAtomPosition(k, p)
            mol.SetProp("_Name", names[i])
            f.write(Chem.MolToMolBlock(mol, kekulize=False) + "$$$$\n")
    r["xtb"]["per_molecule"].pop("relaxed_positions")
    return r, names


# ---------------------------------------------------------------- comparison


def _row(metric, ours, ref, target):
    rel = abs(ours - ref) / abs(ref) if ref else (0.0 if ours == ref else None)
    ok = ours == ref if target == "exact" else (rel is not None and rel <= 0.01)
    return {"metric": metric, "moldiff": ours, "reference": ref, "relative_difference": rel, "target": target, "agrees": ok}


def same_geometries(out: Path, ref: dict) -> list[dict]:
    """The deviation definitions alone: both sides' functions on the same geometries, read from the
    same files (the input SDF and moldiff's relaxed SDF, 4 decimals each), so they must agree exactly."""
    from moldiff.data.user import read_molecules
    from moldiff.metrics.revisited import geometry_deviations

    before, names = read_molecules(out / "crosscheck.sdf")
    after, relaxed_names = read_molecules(out / "moldiff_relaxed.sdf")
    index = {n: i for i, n in enumerate(names)}
    pooled: dict[str, list] = {"bond_length": [], "bond_angle": [], "torsion": []}
    for k, name in enumerate(relaxed_names):
        i = index[name]
        for key, d in geometry_deviations(before[i][0], before.bonds_of(i), before[i][1], after[k][1]).items():
            pooled[key].append(d)
    rows = []
    for kind, values in pooled.items():
        v, r = np.concatenate(values), ref["deviations_on_moldiff_geometries"][kind]
        rows.append({"metric": kind, "moldiff_mean": float(v.mean()), "reference_mean": r["weighted_mean"],
                     "moldiff_median": float(np.median(v)), "reference_median": r["median"], "moldiff_n": int(v.size), "reference_n": r["n"],
                     "largest_relative_difference": max(abs(v.mean() - r["weighted_mean"]) / r["weighted_mean"],
                                                        abs(np.median(v) - r["median"]) / r["median"])})
    return rows


def compare(ours: dict, ref: dict, names: list[str], out: Path) -> dict:
    assert names == ref["names"], "the two sides read different records"
    n = len(names)
    pm = ours["per_molecule"]
    x, e = ours["xtb"], ours["xtb"]["per_molecule"]["delta_e_kcal_mol"]
    rows = [
        _row("molecule stability (count)", sum(pm["stable"]), int(sum(ref["stable"])), "exact"),
        _row("atom stability (stable atoms)", round(ours["atom_stability"] * sum(ref["n_atoms"])), int(sum(ref["n_stable_atoms"])), "exact"),
        _row("V&C (count)", sum(pm["valid_and_connected"]), int(sum(ref["valid_and_connected"])), "exact"),
        _row("ΔE_relax median (kcal/mol)", x["delta_e_relax_kcal_mol"]["median"], ref["energy"]["med_energy_gain"], "1 %"),
        _row("ΔE_relax mean (kcal/mol)", x["delta_e_relax_kcal_mol"]["mean"], ref["energy"]["avg_energy_gain"], "1 %"),
    ]
    for kind, key in (("bond_length", "bond_length_deviation_angstrom"), ("bond_angle", "bond_angle_deviation_degree"),
                      ("torsion", "torsion_deviation_degree")):
        rows.append(_row(f"{kind} deviation median", x[key]["median"], ref["deviations"][kind]["median"], "1 %"))
        rows.append(_row(f"{kind} deviation mean (the paper's figure)", x[key]["mean"], ref["deviations"][kind]["weighted_mean"], "1 %"))
    same = same_geometries(out, ref)
    differ = {k: [names[i] for i in range(n) if bool(pm[k][i]) != bool(ref[rk][i])]
              for k, rk in (("stable", "stable"), ("valid_and_connected", "valid_and_connected"))}
    per_e = []
    for i, name in enumerate(names):
        theirs = ref["energy_per_molecule"].get(name)
        if theirs and theirs[0] is not None and theirs[1] and np.isfinite(e[i]):
            per_e.append((name, e[i], theirs[0]))
    d = np.array([a - b for _, a, b in per_e])
    return {
        "table": rows,
        "deviation_definitions_on_the_same_geometries": same,
        "per_molecule_disagreements": differ,
        "delta_e_per_molecule": {
            "n_both": len(per_e), "moldiff_n": x["delta_e_relax_kcal_mol"]["n"], "reference_n": int(ref["energy"]["n"]),
            "median_abs_difference_kcal_mol": float(np.median(np.abs(d))) if len(d) else None,
            "within_0.1_kcal_mol": int((np.abs(d) <= 0.1).sum()),
            "largest": sorted(([n_, a, b] for n_, a, b in per_e), key=lambda t: -abs(t[1] - t[2]))[:8],
        },
        "relaxed": {"moldiff": x["n_relaxed"], "reference": len(ref["relaxed_names"]), "moldiff_failures": x["failures"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of isayevlab/geom-drugs-3dgen-evaluation")
    ap.add_argument("--reference-python", default=sys.executable, help="the interpreter for the reference (rdkit, numpy, torch, tqdm)")
    ap.add_argument("--n-mmff", type=int, default=30)
    ap.add_argument("--n-aromatic", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "revisited_crosscheck")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--recheck-definitions", action="store_true",
                    help="only redo the same-geometry check of --results from the files of a finished run in --out")
    a = ap.parse_args()
    if a.recheck_definitions:
        result = json.loads(a.results.read_text())
        result["deviation_definitions_on_the_same_geometries"] = same_geometries(a.out, result["reference_figures"])
        a.results.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(json.dumps(result["deviation_definitions_on_the_same_geometries"], indent=1))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    if not (a.out / "crosscheck.sdf").exists():
        print("groups:", build(a.out, a.n_mmff, a.n_aromatic), flush=True)
    ours, names = run_moldiff(a.out, a.workers)
    print(f"moldiff: {ours['seconds']:.0f} s", flush=True)
    ref = run_reference(a.reference.resolve(), a.reference_python, a.out, threads=a.workers)
    print(f"reference: {ref['seconds']:.0f} s", flush=True)
    cmp = compare(ours, ref, names, a.out)
    from rdkit import rdBase

    groups: dict[str, int] = {}
    for n in names:
        g = re.sub(r"_[0-9.]+", "", n)
        groups[g] = groups.get(g, 0) + 1
    out = {
        "what": "moldiff's GEOM-Drugs Revisited evaluation against the paper's reference code on the same molecules",
        "command": "python benchmarks/revisited_crosscheck.py --reference <checkout> --reference-python <venv>/bin/python",
        "reference": {"repository": "isayevlab/geom-drugs-3dgen-evaluation", "xtb": _xtb_version()},
        "rdkit": rdBase.rdkitVersion, "tblite": _version("tblite"),
        "n_records": len(names), "groups": groups,
        **cmp,
        "moldiff": {k: v for k, v in ours.items() if k != "per_molecule"} | {"xtb": {k: v for k, v in ours["xtb"].items() if k != "per_molecule"}},
        "reference_figures": {k: ref[k] for k in ("energy", "deviations", "deviations_on_moldiff_geometries", "seconds")},
    }
    a.results.write_text(json.dumps(out, indent=2, default=float) + "\n")
    for row in cmp["table"]:
        print(f"{row['metric']:<45} {row['moldiff']:>12.6g} {row['reference']:>12.6g}  {'ok' if row['agrees'] else 'DIFFERS'}")
    print(f"wrote {a.results}")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _xtb_version() -> str | None:
    try:
        text = subprocess.run(["xtb", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return None
    return next((line.strip() for line in text.splitlines() if "xtb version" in line), None)


if __name__ == "__main__":
    main()
