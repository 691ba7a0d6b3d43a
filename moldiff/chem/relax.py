"""Relaxing generated molecules, labelled as such: MMFF94 (RDKit) or GFN2-xTB (tblite, the one BFGS
relaxation of ``moldiff.chem.xtb``), for ``scripts/sample.py relax=mmff|xtb``.

A molecule is relaxed with the bond graph its ``samples.sdf`` record has, and only where that graph
is a molecule: the model's own bonds when RDKit sanitises them, or the corrected protocol's
perceived structure. Every other outcome is counted by reason, never dropped silently: no valid
structure (the record carries EDM's distance bonds), a model graph RDKit refuses, implicit
hydrogens (a model without H: relaxing its heavy atoms alone means nothing), no MMFF94 parameters,
an xTB failure (SCF) or an error from RDKit's minimiser, non-finite coordinates. A relaxation that stops before converging is kept,
flagged and marked in its record.

Energies are reported in kcal/mol for both methods (MMFF94's own unit; GFN2-xTB Hartree x 627.509);
the RMSD is over all atoms after the best rigid superposition, in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moldiff.chem.xtb import relax
from moldiff.data import report as R

METHODS = ("mmff", "xtb")
LABEL = {"mmff": "relaxed with MMFF94 (RDKit)", "xtb": "relaxed with GFN2-xTB (tblite, ASE BFGS)"}
MMFF_ITERS = 2000  # as the conformer build's MMFF step
XTB_STEPS, XTB_FMAX = 200, 0.05  # as the conformer build's xTB polish (fmax in eV/Å)
KCAL_PER_HARTREE = 627.509474

# reasons a molecule is not relaxed
NO_VALID_STRUCTURE = "no_valid_structure"
GRAPH_REJECTED = "model_graph_rejected_by_rdkit"
IMPLICIT_H = "implicit_hydrogens"
MMFF_UNAVAILABLE = "mmff_unavailable"
XTB_FAILED = "xtb_failed"
MMFF_FAILED = "mmff_failed"  # RDKit raised while minimising
FAILED = {"mmff": MMFF_FAILED, "xtb": XTB_FAILED}
# flag: relaxed and written, but stopped at the step limit
NOT_CONVERGED = "not_converged"


@dataclass
class Relaxed:
    mol: object  # RDKit molecule with the relaxed conformer
    converged: bool
    energy_before: float  # kcal/mol
    energy_after: float  # kcal/mol
    rmsd: float  # Å, raw to relaxed after superposition


def relaxable(mol, source: str) -> tuple[object | None, str | None]:
    """(a sanitised copy of ``mol``, None) when it can be relaxed, else (None, reason).
    ``source``: how its record got its bonds (``model``, ``perceived`` or ``edm``)."""
    from rdkit import Chem

    if mol is None or source == "edm":
        return None, NO_VALID_STRUCTURE
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - RDKit's sanitisation errors are several classes
        return None, GRAPH_REJECTED if source == "model" else NO_VALID_STRUCTURE
    if any(a.GetNumImplicitHs() for a in mol.GetAtoms()):
        return None, IMPLICIT_H
    return mol, None


def _rmsd(mol, before: np.ndarray) -> float:
    from rdkit.Chem import rdMolAlign

    ref = type(mol)(mol)
    conf = ref.GetConformer()
    for k, p in enumerate(before):
        conf.SetAtomPosition(k, p.tolist())
    return float(rdMolAlign.AlignMol(type(mol)(mol), ref, atomMap=[(k, k) for k in range(mol.GetNumAtoms())]))


def _has_mmff(mol) -> bool:
    from rdkit.Chem import rdForceFieldHelpers as FF

    return bool(FF.MMFFHasAllMoleculeParams(mol))


def relax_mmff(mol, max_iters: int = MMFF_ITERS) -> Relaxed:
    """MMFF94 minimisation of a sanitised molecule with explicit hydrogens and MMFF94 parameters."""
    from rdkit.Chem import rdForceFieldHelpers as FF

    props = FF.MMFFGetMoleculeProperties(mol)
    before = mol.GetConformer().GetPositions()
    ff = FF.MMFFGetMoleculeForceField(mol, props)
    e0 = ff.CalcEnergy()
    status = ff.Minimize(maxIts=max_iters)
    return Relaxed(mol, status == 0, float(e0), float(ff.CalcEnergy()), _rmsd(mol, before))


def relax_xtb(mol, steps: int = XTB_STEPS, fmax: float = XTB_FMAX) -> Relaxed:
    """GFN2-xTB relaxation at the graph's total formal charge."""
    from rdkit import Chem

    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    before = mol.GetConformer().GetPositions()
    r = relax(numbers, before, steps, fmax, Chem.GetFormalCharge(mol))
    conf = mol.GetConformer()
    for k, p in enumerate(r.positions):
        conf.SetAtomPosition(k, p.tolist())
    return Relaxed(mol, r.converged, r.energy_before * KCAL_PER_HARTREE, r.energy_after * KCAL_PER_HARTREE, _rmsd(mol, before))


def relax_molecules(mols: list, sources: list[str], method: str, names: list[str] | None = None
                    ) -> tuple[list[tuple[int, Relaxed]], R.InputReport]:
    """(index, result) of each molecule relaxed, and the count of every outcome by reason
    (``names`` name the molecules in its examples)."""
    from rdkit import Chem, rdBase

    if method not in METHODS:
        raise ValueError(f"relax: use one of {METHODS}, got {method!r}")
    report, done = R.InputReport(), []
    with rdBase.BlockLogs():
        for k, (mol, source) in enumerate(zip(mols, sources)):
            report.n_records += 1
            where = names[k] if names is not None else f"molecule {k}"
            ready, why = relaxable(mol, source)
            if ready is None:
                report.reject(why, where)
                continue
            if method == "mmff" and not _has_mmff(ready):
                report.reject(MMFF_UNAVAILABLE, where)
                continue
            try:
                r = relax_mmff(ready) if method == "mmff" else relax_xtb(ready)
            except ImportError:
                raise  # tblite missing: the job's problem, checked before sampling
            except Exception as exc:  # noqa: BLE001 - an SCF failure is this molecule's outcome, not the run's end
                report.reject(FAILED[method], where, f"{type(exc).__name__}: {exc}"[:200])
                continue
            pos = r.mol.GetConformer().GetPositions()
            if not (np.isfinite(pos).all() and math.isfinite(r.energy_after)):
                report.reject(R.NONFINITE, where)
                continue
            if not r.converged:
                report.flag(NOT_CONVERGED, where)
            try:  # written Kekulé, as samples.sdf is: RDKit reads the record with default settings
                Chem.Kekulize(r.mol, clearAromaticFlags=True)
            except Exception:  # noqa: BLE001 - kept aromatic; the record still holds the relaxed molecule
                pass
            done.append((k, r))
    return done, report


def summary(method: str, n: int, done: list[tuple[int, Relaxed]], report: R.InputReport) -> dict:
    """The relaxation's figures, labelled: what ``relax_<method>.json`` holds."""
    de = np.array([r.energy_after - r.energy_before for _, r in done])
    rmsd = np.array([r.rmsd for _, r in done])
    med = lambda a: None if not len(a) else round(float(np.median(a)), 3)  # noqa: E731
    return {
        "label": LABEL[method] + ": relaxed molecules, not the raw samples (samples.sdf, metrics.json)",
        "method": method,
        "settings": {"max_iters": MMFF_ITERS} if method == "mmff" else {"steps": XTB_STEPS, "fmax_eV_per_A": XTB_FMAX},
        "n": n,
        "relaxed": len(done),
        "converged": int(sum(r.converged for _, r in done)),
        "not_relaxed": report.n_rejected,
        "not_relaxed_by_reason": dict(report.rejected),
        "flagged": dict(report.flagged),
        "examples": report.examples,
        "median_energy_change_kcal_mol": med(de),
        "median_rmsd_A": med(rmsd),
    }
