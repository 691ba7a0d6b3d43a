"""The evaluation of "GEOM-Drugs Revisited" (Nikitin et al. 2025) on molecules that carry their own
bonds and formal charges (an SDF from moldiff or any other tool).

Everything is judged on the graph as written; nothing is re-derived from the coordinates:

* **stability**: an atom is stable when its (number of aromatic bonds, summed order of its other
  bonds, H included) pair is allowed for its (element, formal charge) by the paper's aromatic-aware
  table (``moldiff/chem/data/geom_valencies.json``); an (element, charge) the table lacks is
  unstable. Aromatic bonds count as written, so a Kekulé record and an aromatic one of the same
  molecule are judged on their own bonds, as the paper's code does.
* **validity** (RDKit sanitises the record as written: bonds, orders, charges, explicit H only) and
  **validity and connectivity** (V&C: valid and in one piece).
* **ΔE_relax** (kcal/mol): GFN2-xTB energy at the input geometry minus that after a relaxation to
  convergence (``moldiff.chem.xtb.relax``, BFGS to ``FMAX`` eV/Å), at the record's total formal
  charge; median and mean over the V&C molecules, as the paper reports them.
* **geometry deviations after relaxation**: for every written bond, |Δ length| (Å); for every pair
  of bonds at an atom, |Δ angle| (°); for every torsion i-j-k-l about a bond j-k whose atoms both
  have another neighbour and no triple bond, the wrapped |Δ dihedral| (°). The paper's figure is
  the mean over all of them pooled (its per-type means weighted by counts); the median is given
  beside. As in the paper's code, these cover every relaxed molecule, valid or not.

Records the reader rejects count as failures of every molecule-level rate; a relaxation that fails
or does not converge is counted with its reason and left out of the xTB figures.
"""

from __future__ import annotations

import math
import time

import numpy as np
from rdkit import Chem

from moldiff.chem.determine_bonds import geom_valency_table
from moldiff.chem.xtb import relax, require_tblite
from moldiff.data.molecules import MoleculeSet
from moldiff.metrics.graph import _sanitized, written_mol

HARTREE_TO_KCAL_MOL = 627.509
# xtb --opt's default ("normal") stops at a gradient norm of 1e-3 Eh/Bohr with an energy change
# below 5e-6 Eh; 0.005 eV/Å per atom is about that norm spread over a drug-sized molecule. Looser
# (ASE's usual 0.05) stops early on the flat torsional surface: ΔE 7.3 against xtb's 13.2 kcal/mol
# on a 51-atom MMFF conformer.
FMAX = 0.005
MAX_STEPS = 2000
AROMATIC = 4  # MoleculeSet's bond code


def atom_stability(numbers, charges, bonds) -> np.ndarray:
    """(n,) stable under the paper's table, from one molecule's written (i, j, code) bonds."""
    numbers = np.asarray(numbers)
    bonds = np.asarray(bonds, np.int64).reshape(-1, 3)
    n = len(numbers)
    aromatic = bonds[:, 2] == AROMATIC
    n_aromatic = np.bincount(bonds[aromatic, 0], minlength=n) + np.bincount(bonds[aromatic, 1], minlength=n)
    order = np.where(aromatic, 0, bonds[:, 2])
    valence = np.bincount(bonds[:, 0], order, n) + np.bincount(bonds[:, 1], order, n)
    table = geom_valency_table()
    return np.array([(int(a), int(v)) in table.get((int(z), int(q)), ()) for z, q, a, v in zip(numbers, charges, n_aromatic, valence)], bool)


def record_mol(mols: MoleculeSet, i: int) -> Chem.RWMol:
    """Molecule ``i`` as an RDKit mol-file reader builds it: written bonds and charges, and atoms
    and bonds of aromatic bonds flagged aromatic (so sanitising kekulises them, as it would the file)."""
    mol = written_mol(mols, i)
    for bond in mol.GetBonds():
        if bond.GetBondType() == Chem.BondType.AROMATIC:
            bond.SetIsAromatic(True)
            bond.GetBeginAtom().SetIsAromatic(True)
            bond.GetEndAtom().SetIsAromatic(True)
    return mol


def graph_part(mols: MoleculeSet, n_total: int | None = None) -> dict:
    """Stability, validity and V&C of every molecule. Molecule rates divide by ``n_total`` (every
    record read; default ``len(mols)``), atom stability by the atoms judged."""
    if not mols.has_bonds:
        raise ValueError("the GEOM-Drugs Revisited metrics judge the records' own bonds; these molecules carry none "
                         "(an SDF with bonds is needed)")
    n = len(mols)
    n_total = n if n_total is None else int(n_total)
    stable, valid, connected, atoms_ok, atoms = [], [], [], 0, 0
    for i in range(n):
        ok = atom_stability(mols[i][0], mols.charges_of(i), mols.bonds_of(i))
        atoms_ok += int(ok.sum())
        atoms += len(ok)
        stable.append(bool(ok.all()))
        mol = _sanitized(record_mol(mols, i))
        valid.append(mol is not None)
        connected.append(mol is not None and len(Chem.GetMolFrags(mol)) == 1)
    rate = lambda c: c / n_total if n_total else None
    return {
        "atom_stability": atoms_ok / atoms if atoms else None,
        "molecule_stability": rate(sum(stable)),
        "validity": rate(sum(valid)),
        "valid_and_connected": rate(sum(connected)),
        "n": n_total,
        "n_judged": n,
        "per_molecule": {"stable": stable, "valid": valid, "valid_and_connected": connected},
    }


# ---------------------------------------------------------------- geometry after relaxation


def _neighbours(n: int, bonds: np.ndarray) -> list[list[int]]:
    nb: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds[:, :2].tolist():
        nb[i].append(j)
        nb[j].append(i)
    return nb


def angle_triples(n: int, bonds) -> np.ndarray:
    """(T, 3) i-j-k for every pair of bonds j-i, j-k at an atom j."""
    nb = _neighbours(n, np.asarray(bonds).reshape(-1, 3))
    rows = [(a[p], j, a[q]) for j, a in enumerate(nb) for p in range(len(a)) for q in range(p + 1, len(a))]
    return np.array(rows, np.int64).reshape(-1, 3)


def torsion_quads(n: int, bonds) -> np.ndarray:
    """(T, 4) i-j-k-l for every bond j-k whose atoms each have another neighbour and are in no
    triple bond, over every neighbour i of j and l of k (l != i: no three-ring degeneracy)."""
    bonds = np.asarray(bonds).reshape(-1, 3)
    nb = _neighbours(n, bonds)
    in_triple = np.zeros(n, bool)
    in_triple[bonds[bonds[:, 2] == 3, :2].ravel()] = True
    rows = []
    for j, k in bonds[:, :2].tolist():
        if len(nb[j]) < 2 or len(nb[k]) < 2 or in_triple[j] or in_triple[k]:
            continue
        rows += [(i, j, k, l) for i in nb[j] if i != k for l in nb[k] if l != j and l != i]
    return np.array(rows, np.int64).reshape(-1, 4)


def _angles(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    u, v = x[t[:, 0]] - x[t[:, 1]], x[t[:, 2]] - x[t[:, 1]]
    cos = np.sum(u * v, 1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _dihedrals(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    b0, b1, b2 = x[q[:, 1]] - x[q[:, 0]], x[q[:, 2]] - x[q[:, 1]], x[q[:, 3]] - x[q[:, 2]]
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    m = np.cross(n1, b1 / np.linalg.norm(b1, axis=1, keepdims=True))
    return np.degrees(np.arctan2(np.sum(m * n2, 1), np.sum(n1 * n2, 1)))


def geometry_deviations(numbers, bonds, before, after) -> dict[str, np.ndarray]:
    """|Δ| per bond length (Å), bond angle (°) and torsion (°, wrapped to [0, 180]) between two
    geometries of one molecule with written ``bonds`` (i, j, code)."""
    bonds = np.asarray(bonds, np.int64).reshape(-1, 3)
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    n = len(numbers)
    length = lambda x: np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
    t, q = angle_triples(n, bonds), torsion_quads(n, bonds)
    dt = np.abs(_dihedrals(before, q) - _dihedrals(after, q))
    return {
        "bond_length": np.abs(length(before) - length(after)),
        "bond_angle": np.abs(_angles(before, t) - _angles(after, t)),
        "torsion": np.minimum(dt, 360.0 - dt),
    }


# ---------------------------------------------------------------- xTB


def _relax_one(args):
    """One molecule's relaxation in a worker: (relaxed positions, E before, E after, converged) or
    the error's text; any failure is this molecule's, reported, not raised."""
    numbers, positions, charge, fmax, steps = args
    try:
        r = relax(numbers, positions, steps=steps, fmax=fmax, charge=charge)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - tblite/ASE failures are per-molecule outcomes
        return f"{type(err).__name__}: {err}"
    return r.positions, r.energy_before, r.energy_after, r.converged


def _summary(values) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {"median": float(np.median(v)) if v.size else None, "mean": float(v.mean()) if v.size else None, "n": int(v.size)}


def xtb_part(mols: MoleculeSet, n: int, valid_and_connected, workers: int = 1, fmax: float = FMAX, steps: int = MAX_STEPS,
             names=None) -> dict:
    """ΔE_relax and the geometry deviations for the first ``n`` molecules (module docstring).
    ``valid_and_connected``: per molecule, from :func:`graph_part`."""
    require_tblite()
    n = min(int(n), len(mols))
    jobs = [(mols[i][0], mols[i][1], int(mols.charges_of(i).sum()), fmax, steps) for i in range(n)]
    t = time.perf_counter()
    if workers > 1 and n > 1:
        from moldiff.metrics.xtb_energy import xtb_pool

        with xtb_pool(min(workers, n)) as pool:
            outcomes = list(pool.map(_relax_one, jobs))
    else:
        outcomes = [_relax_one(job) for job in jobs]
    failures, delta_e, deviations = [], [math.nan] * n, {"bond_length": [], "bond_angle": [], "torsion": []}
    relaxed: list = [None] * n
    n_unconverged = 0
    for i, out in enumerate(outcomes):
        name = names[i] if names is not None else str(i)
        if isinstance(out, str):
            failures.append([name, out])
            continue
        positions, e_before, e_after, converged = out
        relaxed[i] = positions
        if not converged:  # xtb reports no energy gain for an optimisation that does not converge
            n_unconverged += 1
            failures.append([name, f"relaxation did not reach fmax={fmax} eV/Å in {steps} steps"])
            continue
        for key, d in geometry_deviations(mols[i][0], mols.bonds_of(i), mols[i][1], positions).items():
            deviations[key].append(d)
        if valid_and_connected[i]:
            delta_e[i] = (e_before - e_after) * HARTREE_TO_KCAL_MOL
    pooled = {k: np.concatenate(v) if v else np.zeros(0) for k, v in deviations.items()}
    out = {
        "delta_e_relax_kcal_mol": _summary(delta_e),
        "bond_length_deviation_angstrom": _summary(pooled["bond_length"]),
        "bond_angle_deviation_degree": _summary(pooled["bond_angle"]),
        "torsion_deviation_degree": _summary(pooled["torsion"]),
        "n_relaxed": n - len(failures),
        "n_requested": n,
        "n_failed": len(failures),
        "n_unconverged": n_unconverged,
        "failures": failures[:20],
        "fmax_eV_per_angstrom": fmax,
        "max_steps": steps,
        "seconds": time.perf_counter() - t,
        "per_molecule": {"delta_e_kcal_mol": delta_e, "relaxed_positions": relaxed},
    }
    return out


def revisited(mols: MoleculeSet, n_total: int | None = None, xtb: int = 0, workers: int = 1, names=None,
              per_molecule: bool = False) -> dict:
    """Every GEOM-Drugs Revisited figure of ``mols``; the xTB part on the first ``xtb`` molecules (0:
    skipped). ``per_molecule`` keeps each molecule's outcomes (off for ``metrics.json``)."""
    result = graph_part(mols, n_total)
    if xtb and len(mols):
        result["xtb"] = xtb_part(mols, xtb, result["per_molecule"]["valid_and_connected"], workers, names=names)
    if not per_molecule:
        result.pop("per_molecule")
        result.get("xtb", {}).pop("per_molecule", None)
    return result
