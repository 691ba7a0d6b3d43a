"""Running both chemistry protocols over a ``MoleculeSet``: per-atom and per-molecule outcomes."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from moldiff.chem.edm_protocol import edm_bond_graph, edm_stability
from moldiff.data.elements import GEOM_VOCAB, Vocabulary
from moldiff.data.molecules import MoleculeSet


@dataclass
class ProtocolOutcome:
    atom_stable: np.ndarray  # (A,) bool
    mol_stable: np.ndarray  # (M,) bool
    smiles: list  # (M,) validity/uniqueness key, None where invalid
    whole_smiles: list  # (M,) whole-molecule SMILES (novelty reference), None where invalid
    n_fragments: np.ndarray  # (M,)
    bonds: tuple[np.ndarray, np.ndarray]  # (i, j) global atom indices of the protocol's bonds
    failures: dict[str, int]
    charges: dict = field(default_factory=dict)  # how each total charge was known (corrected protocol)
    # (M,) the total charge each molecule's structure was found at (given or searched); None where
    # no valid, stable structure was found, or the protocol does not perceive charges (EDM's)
    total_charge: list = field(default_factory=list)


def run_edm(mols: MoleculeSet, vocab: Vocabulary) -> ProtocolOutcome:
    from moldiff.chem.edm_rdkit import edm_fragment_counts, edm_validity

    graph = edm_bond_graph(mols, vocab)
    atom_ok, mol_ok = edm_stability(mols, vocab, graph)
    whole, largest = edm_validity(mols, graph, single_bonds_only=vocab.name == GEOM_VOCAB.name)
    return ProtocolOutcome(atom_ok, mol_ok, largest, whole, edm_fragment_counts(mols, graph), (graph.i, graph.j), {})


def molecule_charges(mols: MoleculeSet) -> list:
    """Each molecule's total charge from the ``charge`` property (read from SDF formal charges),
    None where the input does not give it (NaN, or no such property)."""
    given = mols.properties.get("charge")
    if given is None:
        return [None] * len(mols)
    return [None if np.isnan(q) else int(q) for q in np.asarray(given, np.float64)]


def valence_rule(vocab: Vocabulary | None) -> str:
    """The corrected protocol's stability rule: GEOM-Drugs' aromatic-aware table for GEOM's
    vocabulary, the Kekulé table otherwise (QM9)."""
    return "geom" if vocab is not None and vocab.name == GEOM_VOCAB.name else "kekule"


def _perceive_chunk(args):
    from moldiff.chem.determine_bonds import perceive
    from moldiff.chem.rdkit_mol import quiet_rdkit

    mols, charges, valences = args
    out = []
    with quiet_rdkit():
        for m in range(len(mols)):
            p = perceive(*mols[m], charge=charges[m], valences=valences)
            out.append((p.atom_stable, p.smiles, p.n_fragments, p.failure, p.connectivity, p.charge, p.searched))
    return out


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _charge_counts(given: list, results: list) -> dict:
    """How the total charges were known: from the input, or not given. ``searched`` counts those
    for which charge 0 gave no valid, stable, unsplit structure, so other charges were tried;
    ``found``, by charge, those for which another charge gave one."""
    found: dict[str, int] = {}
    for q, r in zip(given, results):
        if q is None and r[5] != 0 and r[3] is None and r[0].all():
            found[f"{r[5]:+d}"] = found.get(f"{r[5]:+d}", 0) + 1
    n_given = sum(q is not None for q in given)
    searched = sum(q is None and r[6] for q, r in zip(given, results))
    return {"from_input": n_given, "not_given": len(given) - n_given, "searched": searched, "found": dict(sorted(found.items()))}


def run_corrected(mols: MoleculeSet, workers: int | None = None, chunk: int = 500, valences: str = "kekule") -> ProtocolOutcome:
    """rdDetermineBonds perception, molecule by molecule, over ``workers`` processes.

    A molecule's total charge is the ``charge`` property where the input gives it, else searched
    (``moldiff.chem.determine_bonds``); ``valences`` is the stability rule (``valence_rule``).
    """
    workers = default_workers() if workers is None else workers
    given = molecule_charges(mols)
    pieces = [
        (mols.subset(np.arange(a, min(a + chunk, len(mols)))), given[a : a + chunk], valences) for a in range(0, len(mols), chunk)
    ]
    if workers > 1 and len(pieces) > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            results = [r for part in pool.map(_perceive_chunk, pieces) for r in part]
    else:
        results = [r for piece in pieces for r in _perceive_chunk(piece)]
    failures: dict[str, int] = {}
    for r in results:
        if r[3]:
            key = r[3].split(":")[0] if r[3].startswith("bond orders") else r[3]
            failures[key] = failures.get(key, 0) + 1
    atom_ok = np.concatenate([r[0] for r in results]) if results else np.zeros(0, bool)
    mol_ok = np.array([r[0].all() and r[3] is None for r in results], bool)
    smiles = [r[1] for r in results]
    conn = [r[4] + off for r, off in zip(results, mols.offsets[:-1])]
    conn = np.concatenate(conn) if conn else np.zeros((0, 2), np.int64)
    n_frag = np.array([r[2] for r in results], np.int64)
    total = [int(r[5]) if r[3] is None and r[0].all() else None for r in results]
    return ProtocolOutcome(atom_ok, mol_ok, smiles, smiles, n_frag, (conn[:, 0], conn[:, 1]), failures, _charge_counts(given, results), total)
