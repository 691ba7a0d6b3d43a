"""``evaluate``: every metric for a set of molecules, under EDM's protocol and the corrected one.

Denominators: molecule-level rates divide by every record read, so a record rejected as bad
input (unreadable, unknown element, non-finite coordinates, empty) counts as a failure, never as
a silent drop. Atom stability divides by the atoms of the molecules that could be evaluated.
Uniqueness and novelty follow EDM: unique / valid and novel / unique. A rate with nothing to divide
by (uniqueness with no valid molecule, atom stability with no atom evaluated) is None, not 0.
The corrected protocol takes each molecule's total charge from the input where it is given (SDF
formal charges) and searches it otherwise; ``result["corrected"]["charge"]`` counts both.
Both protocols read only elements and coordinates. Records that carry their own bonds (an SDF)
are also judged as written (``result["written_graph"]``: validity, one piece, stability with
formal charges, uniqueness, and agreement with the bonds perceived from the coordinates), and on
request by "GEOM-Drugs Revisited"'s protocol (``"revisited"``, ``metrics/revisited.py``), which
needs those bonds.
"""

from __future__ import annotations

import time

from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.metrics.distribution import GeometryStats, distribution_distances, geometry_stats
from moldiff.metrics.posebusters_checks import DEFAULT_TIMEOUT, posebusters_summary
from moldiff.metrics.protocols import ProtocolOutcome, default_workers, molecule_charges, run_corrected, run_edm, valence_rule

PROTOCOLS = ("edm", "corrected", "revisited")
COORDINATE_PROTOCOLS = ("edm", "corrected")  # those that derive bonds from the coordinates


def _rate(count, of: int) -> float | None:
    """count / of; None when ``of`` is 0: the rate is undefined then, not 0 %."""
    return float(count) / of if of else None


def summarize(out: ProtocolOutcome, n_total: int, train_smiles: set[str] | None) -> dict:
    valid = [s for s in out.smiles if s is not None]
    unique = set(valid)
    res = {
        "atom_stability": _rate(out.atom_stable.sum(), len(out.atom_stable)),
        "molecule_stability": _rate(out.mol_stable.sum(), n_total),
        "validity": _rate(len(valid), n_total),
        "uniqueness": _rate(len(unique), len(valid)),
        "valid_and_unique": _rate(len(unique), n_total),
        "connectivity": _rate((out.n_fragments == 1).sum(), n_total),
    }
    if train_smiles is not None:
        res["novelty"] = _rate(sum(s not in train_smiles for s in unique), len(unique))
    if out.failures:
        res["perception_failures"] = dict(out.failures)
    if out.charges:
        res["charge"] = dict(out.charges)
    return res


def evaluate(
    mols: MoleculeSet,
    vocab: Vocabulary,
    report: InputReport | None = None,
    reference: GeometryStats | None = None,
    train_smiles: dict[str, set[str]] | None = None,
    protocols=COORDINATE_PROTOCOLS,
    workers: int | None = None,
    posebusters: int = 0,
    xtb: int = 0,
    names=None,
    posebusters_timeout: float | None = DEFAULT_TIMEOUT,
    revisited_xtb: int = 0,
) -> dict:
    """Metrics for ``mols``. ``report`` counts bad input (``mols`` is checked against ``vocab`` here).

    ``posebusters`` / ``xtb``: how many molecules (the first ones) get the optional checks;
    ``posebusters_timeout``: seconds one molecule may take in PoseBusters (see ``posebusters_summary``).
    ``revisited_xtb``: how many molecules (the first ones) the ``"revisited"`` protocol relaxes with
    GFN2-xTB for ΔE_relax and the geometry deviations (0: those are skipped).
    """
    report = report if report is not None else InputReport()
    if report.n_records == 0:
        report.n_records = len(mols)
    mols, kept_index = mols.checked(vocab, report, names, return_index=True)
    n_total = len(mols) + report.n_rejected
    result: dict = {"n_molecules": n_total, "n_evaluated": len(mols), "vocabulary": vocab.name, "input": report.to_dict()}
    timings = {}
    outcomes = {}
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; use {PROTOCOLS}")
        if name == "revisited":
            continue  # judged on the written bonds, below
        t = time.perf_counter()
        outcomes[name] = run_edm(mols, vocab) if name == "edm" else run_corrected(mols, workers, valences=valence_rule(vocab))
        timings[name] = time.perf_counter() - t
        result[name] = summarize(outcomes[name], n_total, (train_smiles or {}).get(name))
    if mols.has_bonds and len(mols):  # the records' own graphs, as written (metrics/graph.py)
        from moldiff.metrics.graph import graph_metrics

        t = time.perf_counter()
        result["written_graph"] = graph_metrics(mols, geometry=True, valences=valence_rule(vocab), n_total=n_total)
        timings["written_graph"] = time.perf_counter() - t
    if "revisited" in protocols:
        from moldiff.metrics.revisited import revisited

        if not mols.has_bonds:
            raise ValueError("protocol revisited judges the records' own bonds and this input carries none: "
                             "give an SDF whose records have bonds (XYZ files and dataset caches have none)")
        t = time.perf_counter()
        w = default_workers() if workers is None else max(1, workers)
        kept = None if names is None else [names[k] for k in kept_index]  # names of the molecules left after the checks
        result["revisited"] = revisited(mols, n_total, revisited_xtb, w, kept) if len(mols) else {}
        timings["revisited"] = time.perf_counter() - t
    if reference is not None and len(mols):
        t = time.perf_counter()
        bonds = (outcomes.get("corrected") or run_corrected(mols, workers, valences=valence_rule(vocab))).bonds
        result["distribution"] = distribution_distances(geometry_stats(mols, *bonds), reference)
        timings["distribution"] = time.perf_counter() - t
    if posebusters and len(mols):
        t = time.perf_counter()
        result["posebusters"] = posebusters_summary(
            _rdkit_mols(mols, posebusters, valence_rule(vocab)),
            timeout=posebusters_timeout,
            workers=default_workers() if workers is None else max(1, workers),  # 0 means serial, as for the protocols
        )
        timings["posebusters"] = time.perf_counter() - t
    if xtb and len(mols):
        from moldiff.metrics.xtb_energy import strain_energies

        t = time.perf_counter()
        triples, n_searched = _with_searched_charges(mols, outcomes.get("corrected"), min(xtb, len(mols)))
        result["xtb"] = {**strain_energies(triples), "n_charge_from_search": n_searched}
        timings["xtb"] = time.perf_counter() - t
    result["seconds"] = timings
    return result


def _with_searched_charges(mols: MoleculeSet, corrected, n: int) -> tuple[list, int]:
    """(numbers, positions, total charge) of the first n molecules: the input's charge where it
    gives one, else the one the corrected protocol found a valid structure at (an ion computed at
    charge 0 would be another species), else None (strain_energies' default, 0); and how many got a non-zero searched charge."""
    given = molecule_charges(mols)
    found = corrected.total_charge if corrected is not None else [None] * len(mols)
    triples = [(*mols[m], given[m] if given[m] is not None else found[m]) for m in range(n)]
    return triples, sum(given[m] is None and found[m] not in (None, 0) for m in range(n))


def _rdkit_mols(mols: MoleculeSet, n: int, valences: str) -> list:
    """Corrected-protocol RDKit molecules with conformers for the first ``n``; None where no
    structure was found, which PoseBusters' summary counts in ``n_failed_to_check``."""
    from moldiff.chem.determine_bonds import perceive
    from moldiff.chem.rdkit_mol import quiet_rdkit

    charges = molecule_charges(mols)
    with quiet_rdkit():  # PoseBusters switches RDKit's log back on; failures are counted, not printed
        return [perceive(*mols[m], charge=charges[m], valences=valences).mol for m in range(min(n, len(mols)))]
