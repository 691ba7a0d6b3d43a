"""One molecule's conformers from its SMILES, made as GEOM-Drugs' are; the dataset build around
them (workers, chunks, resume, the cache) is ``moldiff.jobs.build_conformers``.

Per molecule: RDKit's ETKDGv3 embeds ``k`` conformers (seeded from the build seed and the
molecule's row, so a molecule's conformers do not depend on chunking, workers or the rest of the
file), MMFF94 relaxes them, and optionally GFN2-xTB (tblite, GEOM's own level of theory) polishes
each one with ASE's BFGS (``moldiff.chem.xtb``). Conformers are ranked by energy (0 = lowest), as
GEOM's are. The molecule's bonds come from its SMILES, Kekulé (orders 1, 2, 3) as QM9's bond labels
are (``moldiff.chem.bond_labels.kekule_graph``), with the hydrogens' order the conformers' atoms have.

Bad input is counted, never fatal: a SMILES RDKit cannot parse, several fragments (salts,
mixtures), an element outside EDM's GEOM vocabulary, an atom charge outside GEOM-Drugs' valency
table (the corrected protocol could never call it stable), no MMFF parameters, failed embedding;
per conformer: MMFF or xTB not converged, an xTB failure (SCF). Molecule-level outcomes go to one
``InputReport`` (a record is a SMILES row), conformer-level ones to another (a record is an
embedded conformer).

RDKit, tblite and ASE do the chemistry; what is written here is the screening, the seeding and
the ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moldiff.chem.xtb import relax
from moldiff.data import report as R
from moldiff.data.elements import GEOM_VOCAB, SYMBOLS

# Molecule-level reasons (a record is one SMILES row).
UNPARSABLE = "unparsable_smiles"
FRAGMENTS = "several_fragments"
UNKNOWN_ELEMENT = R.UNKNOWN_ELEMENT
UNSUPPORTED_CHARGE = "unsupported_charge"
MMFF_UNAVAILABLE = "mmff_unavailable"
EMBEDDING_FAILED = "embedding_failed"
NO_CONFORMER = "no_conformer_left"  # every embedded conformer was rejected below
BUILD_ERROR = "build_error"  # RDKit raised on the molecule (counted, the build goes on)
FEWER_CONFORMERS = "fewer_conformers"  # flag: kept, with fewer than k conformers
RANDOM_COORDS = "embedded_from_random_coords"  # flag: ETKDG's usual start failed, random starts worked
# Conformer-level reasons (a record is one embedded conformer).
MMFF_NOT_CONVERGED = "mmff_not_converged"
XTB_FAILED = "xtb_failed"
XTB_NOT_CONVERGED = "xtb_not_converged"

KCAL_PER_HARTREE = 627.509474
KT_KCAL = 0.0019872043 * 298.15  # R T at 298.15 K, kcal/mol


@dataclass(frozen=True)
class ConformerSettings:
    """What decides the conformers (and so the cache's bytes); recorded in the report."""

    conformers: int = 5  # k per molecule
    seed: int = 0
    mmff_iters: int = 2000  # MMFF94 iterations before a conformer counts as not converged
    prune_rms: float = 0.0  # ETKDG's pruneRmsThresh in Å (heavy atoms); 0 keeps every embedding
    xtb: bool = False  # polish each conformer with GFN2-xTB (tblite)
    xtb_fmax: float = 0.05  # eV/Å (ASE's unit)
    xtb_steps: int = 200

    def check(self) -> None:
        if self.conformers < 1:
            raise ValueError(f"conformers must be >= 1, got {self.conformers}")
        if self.mmff_iters < 1 or self.xtb_steps < 1:
            raise ValueError("mmff_iters and xtb_steps must be >= 1")
        if self.prune_rms < 0 or self.xtb_fmax <= 0:
            raise ValueError("prune_rms must be >= 0 and xtb_fmax > 0")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")


def molecule_seed(seed: int, row: int) -> int:
    """ETKDG's seed for the molecule on ``row``: a hash of (seed, row), so builds with nearby
    seeds do not share streams shifted by one row."""
    return int(np.random.SeedSequence([seed, row]).generate_state(1)[0]) & 0x7FFFFFFF


def _allowed_charges() -> set[tuple[int, int]]:
    from moldiff.chem.determine_bonds import geom_valency_table  # imports RDKit

    return {key for key in geom_valency_table() if key[1] != 0}


def screen(mol) -> tuple[str, str] | None:
    """(reason, detail) when a parsed molecule cannot enter the dataset, else None."""
    from rdkit import Chem

    frags = Chem.GetMolFrags(mol)
    if len(frags) > 1:
        return FRAGMENTS, f"{len(frags)} fragments"
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    unknown = sorted({int(z) for z in numbers[GEOM_VOCAB.encode(numbers) < 0]})
    if unknown:
        return UNKNOWN_ELEMENT, f"atomic numbers {unknown} not in {GEOM_VOCAB.name}"
    allowed = _allowed_charges()
    odd = sorted({(a.GetAtomicNum(), a.GetFormalCharge()) for a in mol.GetAtoms()
                  if a.GetFormalCharge() and (a.GetAtomicNum(), a.GetFormalCharge()) not in allowed})
    if odd:
        return UNSUPPORTED_CHARGE, ", ".join(f"{SYMBOLS[z]}{q:+d}" for z, q in odd)
    return None


# --- one molecule ------------------------------------------------------------------------------
@dataclass
class MoleculeConformers:
    """One molecule's kept conformers, lowest energy first."""

    row: int
    numbers: np.ndarray  # (n,) int16
    formal_charges: np.ndarray  # (n,) int8
    charge: int
    positions: np.ndarray  # (c, n, 3) float32, Å
    energies: np.ndarray  # (c,) Hartree
    weights: np.ndarray  # (c,) Boltzmann weights at 298.15 K over these c conformers
    bonds: np.ndarray  # (b, 3) int32 rows (i, j, order), i < j: the SMILES' Kekulé graph, QM9 labels' convention


def _embed(mol, settings: ConformerSettings, row: int) -> tuple[list[int], bool]:
    """Conformer ids, and whether random starting coordinates were needed."""
    from rdkit.Chem import rdDistGeom

    params = rdDistGeom.ETKDGv3()
    params.randomSeed = molecule_seed(settings.seed, row)
    params.numThreads = 1  # parallel over molecules, in processes
    params.pruneRmsThresh = settings.prune_rms if settings.prune_rms > 0 else -1.0
    ids = list(rdDistGeom.EmbedMultipleConfs(mol, settings.conformers, params))
    if ids:
        return ids, False
    params.useRandomCoords = True  # RDKit's advice when the eigenvector start fails (large, strained molecules)
    return list(rdDistGeom.EmbedMultipleConfs(mol, settings.conformers, params)), True


def boltzmann_weights(energies_hartree: np.ndarray) -> np.ndarray:
    rel = (np.asarray(energies_hartree, np.float64) - np.min(energies_hartree)) * KCAL_PER_HARTREE
    w = np.exp(-rel / KT_KCAL)
    return w / w.sum()


def molecule_conformers(smiles: str, row: int, settings: ConformerSettings,
                        molecules: R.InputReport, conformers: R.InputReport) -> MoleculeConformers | None:
    """The kept conformers of one SMILES, or None; every outcome is counted in the reports."""
    molecules.n_records += 1
    where = f"row {row} {smiles[:80]}"
    try:
        return _molecule_conformers(smiles, row, settings, molecules, conformers, where)
    except ImportError:
        raise  # a missing dependency is the build's problem, not this molecule's
    except Exception as exc:  # noqa: BLE001 - one odd molecule must not end a long build
        molecules.reject(BUILD_ERROR, where, f"{type(exc).__name__}: {exc}"[:200])
        return None


def _molecule_conformers(smiles, row, settings, molecules, conformers, where):
    from rdkit import Chem

    from moldiff.chem.bond_labels import kekule_graph  # RDKit; the convention QM9's bond labels use
    from rdkit.Chem import rdForceFieldHelpers as FF

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        molecules.reject(UNPARSABLE, where)
        return None
    why = screen(mol)
    if why is not None:
        molecules.reject(why[0], where, why[1])
        return None
    mol = Chem.AddHs(mol)
    if not FF.MMFFHasAllMoleculeParams(mol):
        molecules.reject(MMFF_UNAVAILABLE, where)
        return None
    ids, random_start = _embed(mol, settings, row)
    if not ids:
        molecules.reject(EMBEDDING_FAILED, where)
        return None
    if random_start:
        molecules.flag(RANDOM_COORDS, where)
    results = FF.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=settings.mmff_iters)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int16)
    formal = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=np.int8)
    charge = int(formal.sum())
    kept = []
    for cid, (status, energy) in zip(ids, results):
        conformers.n_records += 1
        here = f"{where} conformer {cid}"
        if status != 0:
            conformers.reject(MMFF_NOT_CONVERGED, here, f"status {status} after {settings.mmff_iters} iterations")
            continue
        pos = mol.GetConformer(cid).GetPositions()
        energy = energy / KCAL_PER_HARTREE
        if settings.xtb:
            try:
                pos, _, energy, ok = relax(numbers, pos, settings.xtb_steps, settings.xtb_fmax, charge)
            except ImportError:
                raise
            except Exception as exc:  # noqa: BLE001 - SCF failures are per-conformer outcomes
                conformers.reject(XTB_FAILED, here, f"{type(exc).__name__}: {exc}"[:200])
                continue
            if not ok:
                conformers.reject(XTB_NOT_CONVERGED, here, f"fmax {settings.xtb_fmax} eV/Å not reached in {settings.xtb_steps} steps")
                continue
        if not (np.isfinite(pos).all() and math.isfinite(energy)):
            conformers.reject(R.NONFINITE, here)
            continue
        kept.append((energy, cid, pos))
    if not kept:
        molecules.reject(NO_CONFORMER, where, f"all {len(ids)} conformers rejected")
        return None
    if len(kept) < settings.conformers:
        molecules.flag(FEWER_CONFORMERS, where, f"{len(kept)} of {settings.conformers}")
    kept.sort(key=lambda t: (t[0], t[1]))  # by energy; ties in embedding order
    energies = np.array([e for e, _, _ in kept])
    bonds, _ = kekule_graph(mol)  # from the SMILES, not the coordinates: exact, the bond model's labels
    return MoleculeConformers(row, numbers, formal, charge, np.stack([p for _, _, p in kept]).astype(np.float32),
                              energies, boltzmann_weights(energies), bonds)
