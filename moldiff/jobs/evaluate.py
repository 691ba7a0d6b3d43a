"""The evaluation job behind ``scripts/evaluate.py``: load, evaluate, print a table, write JSON.

An input with nothing that can be evaluated (a text file that is not an SDF, every record
rejected) is a ValueError, not a table of zeros. ``metrics.json`` is strict JSON: an undefined
figure is ``null`` (``n/a`` in the table).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

from moldiff.data.report import InputReport
from moldiff.data.elements import VOCABULARIES, vocabulary
from moldiff.data.sources import load_source
from moldiff.io.writers import atomic_write
from moldiff.jobs.cli import require_package
from moldiff.metrics.evaluate import COORDINATE_PROTOCOLS, PROTOCOLS, evaluate
from moldiff.metrics.novelty import training_smiles
from moldiff.metrics.posebusters_checks import check_timeout
from moldiff.metrics.reference import reference_stats

ROWS = [
    ("atom_stability", "atom stability"),
    ("molecule_stability", "molecule stability"),
    ("validity", "validity"),
    ("uniqueness", "uniqueness"),
    ("valid_and_unique", "valid & unique"),
    ("novelty", "novelty"),
    ("connectivity", "connected"),
    ("valid_and_connected", "valid & connected"),
]


# EDM's and the corrected protocol derive bonds from the coordinates; the written-graph line and the
# revisited protocol read an SDF's own (docs/evaluation.md)
SDF_NOTE = ("input bonds: the edm and corrected protocols derive bonds from the coordinates (EDM's from distances, the "
            "corrected one by RDKit perception); the written-graph line and the revisited protocol judge the records' own "
            "bonds and formal charges, which also give each molecule's total charge")


def strict_json(obj):
    """``obj`` as strict JSON values: a non-finite number (an undefined rate, a W1 without data)
    becomes None (``null``), never a bare ``NaN`` that strict parsers reject."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> None:
    with atomic_write(path) as f:
        json.dump(strict_json(obj), f, indent=2, allow_nan=False, default=float)


def count(cfg, key: str, least: int = 0) -> int:
    """A molecule count option: a whole number >= ``least``. For the optional checks (least 0), null
    means 0 (off), as users write ``xtb=null``; the reference size (least 1) has no off."""
    value = cfg[key]
    if value is None and least == 0:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        off = " (0 or null: off)" if least == 0 else ""
        raise ValueError(f"{key} must be a whole number >= {least}{off}, got {value!r}")
    return value


def check_config(cfg) -> dict:
    """Fail before any work on a bad value (Hydra already rejects unknown keys); returns the checked
    molecule counts (posebusters, xtb, reference_max)."""
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"protocols: unknown {bad}; choose from {list(PROTOCOLS)}")
    if cfg.vocabulary != "auto" and cfg.vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {cfg.vocabulary!r}; use one of {', '.join(VOCABULARIES)} or auto")
    counts = {key: count(cfg, key) for key in ("posebusters", "xtb", "revisited_xtb")}
    for key, package in (("posebusters", "posebusters"), ("xtb", "tblite"), ("revisited_xtb", "tblite")):
        if counts[key]:
            require_package(package, f"{key}={counts[key]}")
    if counts["revisited_xtb"] and "revisited" not in cfg.protocols:
        raise ValueError(f"revisited_xtb={counts['revisited_xtb']} relaxes molecules for the revisited protocol; "
                         "add it: protocols=[edm,corrected,revisited]")
    counts["reference_max"] = count(cfg, "reference_max", least=1)
    check_timeout(cfg.posebusters_timeout, "posebusters_timeout")
    if cfg.novelty is not None and cfg.novelty not in ("qm9:train", "qm9_noh:train"):
        raise ValueError(f"novelty: use qm9:train, qm9_noh:train or null, got {cfg.novelty!r}")
    return counts


def _number(value, spec: str, factor: float = 1.0, unit: str = "") -> str:
    """``factor * value`` formatted, ``n/a`` for an undefined value (None, or NaN from an optional check)."""
    return "n/a" if value is None or not math.isfinite(value) else format(factor * value, spec) + unit


def format_table(result: dict) -> str:
    protos = [p for p in PROTOCOLS if p in result]
    lines = [f"{'metric (%)':<22}" + "".join(f"{p:>12}" for p in protos)]
    for key, label in ROWS:
        if any(key in result[p] for p in protos):
            cells = [_number(result[p][key], ".2f", 100) if key in result[p] else "-" for p in protos]
            lines.append(f"{label:<22}" + "".join(f"{c:>12}" for c in cells))
    d = result.get("distribution")
    if d:
        lines.append("")
        lines.append(f"atom type TV {_number(d['atom_type_tv'], '.4f')} | atom count TV {_number(d['atom_count_tv'], '.4f')} | "
                     f"bond length W1 {_number(d['bond_length_w1']['weighted_mean'], '.4f', unit=' Å')} | "
                     f"bond angle W1 {_number(d['bond_angle_w1']['weighted_mean'], '.3f', unit='°')}")
    g = result.get("written_graph")
    if g:
        lines.append("")
        lines.append(f"written graph (the file's own bonds and charges): valid {_number(g['valid'], '.2f', 100, ' %')} | "
                     f"valid and one piece {_number(g['valid_connected'], '.2f', 100, ' %')} | "
                     f"molecules stable {_number(g['molecule_stable'], '.2f', 100, ' %')} | "
                     f"atoms stable {_number(g['atom_stable'], '.2f', 100, ' %')} | unique {_number(g['unique'], '.2f', 100, ' %')} | "
                     f"geometry gives the same graph {_number(g.get('geometry_agrees'), '.2f', 100, ' %')}")
    if "revisited" in result:
        lines += ["", revisited_line(result["revisited"])]
    pb = result.get("posebusters")
    if pb:
        lines.append("")
        timed_out = f", {pb['n_timed_out']} of them timed out" if pb["n_timed_out"] else ""
        passed = (f"{_number(pb['pb_valid'], '.2f', 100)} % pass every check, of {pb['n_checked']} checked"
                  if pb["n_checked"] else "none checked")
        lines.append(f"PoseBusters: {passed}; {pb['n_failed_to_check']} could not be checked{timed_out}")
    inp = result["input"]
    lines.append("")
    lines.append(f"{result['n_molecules']} molecules, {result['n_evaluated']} evaluated ({result['vocabulary']} vocabulary); "
                 f"rejected: {inp['rejected'] or 'none'}; flagged: {inp['flagged'] or 'none'}")
    q = result.get("corrected", {}).get("charge")
    if q:
        found = ", ".join(f"{k}: {v}" for k, v in q["found"].items()) or "none"
        lines.append(f"total charge (corrected): {q['from_input']} from the input, {q['not_given']} not given; "
                     f"{q['searched']} of those needed the charge search (found charged: {found})")
    return "\n".join(lines)


def revisited_line(r: dict) -> str:
    """The revisited protocol's xTB figures, or why there are none."""
    x = r.get("xtb")
    if x is None:
        why = ("tblite is not installed: `pip install tblite ase`" if importlib.util.find_spec("tblite") is None
               else "revisited_xtb=N relaxes the first N molecules with GFN2-xTB, ~20 s each for drug-sized ones")
        return f"GEOM-Drugs Revisited xTB (ΔE_relax, geometry deviations): not computed ({why})"
    e, bl, ba, tq = (x[k] for k in ("delta_e_relax_kcal_mol", "bond_length_deviation_angstrom",
                                     "bond_angle_deviation_degree", "torsion_deviation_degree"))
    failed = f"; {x['n_failed']} failed or did not converge" if x["n_failed"] else ""
    return (f"GEOM-Drugs Revisited xTB, {x['n_relaxed']} of {x['n_requested']} relaxed{failed}: "
            f"ΔE_relax median {_number(e['median'], '.2f')} / mean {_number(e['mean'], '.2f')} kcal/mol "
            f"({e['n']} valid & connected) | mean deviation: bond length {_number(bl['mean'], '.4f', unit=' Å')}, "
            f"angle {_number(ba['mean'], '.3f', unit='°')}, torsion {_number(tq['mean'], '.3f', unit='°')}")


def run_evaluation(cfg, output_dir: str | Path) -> dict:
    counts = check_config(cfg)
    report = InputReport()
    mols, names, natural = load_source(cfg.input, report)
    vocab = natural if cfg.vocabulary == "auto" else vocabulary(cfg.vocabulary)
    probe = InputReport().merge(report)  # evaluate() checks and counts the molecules itself
    if not len(mols.checked(vocab, probe, names)):
        raise ValueError(f"{cfg.input}: nothing in it could be evaluated ({probe.summary()}); is it an SDF/XYZ file of molecules?")
    reference = None
    if cfg.reference:
        reference = reference_stats(cfg.reference, counts["reference_max"], cfg.workers)
    train = None
    if cfg.novelty:
        remove_h = cfg.novelty.startswith("qm9_noh")
        train = {p: training_smiles(p, remove_h=remove_h, workers=cfg.workers) for p in cfg.protocols if p in COORDINATE_PROTOCOLS}
    result = evaluate(
        mols, vocab, report, reference, train, tuple(cfg.protocols), cfg.workers, counts["posebusters"], counts["xtb"], names,
        posebusters_timeout=cfg.posebusters_timeout, revisited_xtb=counts["revisited_xtb"],
    )
    result["source"] = cfg.input
    print(format_table(result))
    if Path(str(cfg.input)).suffix.lower() in (".sdf", ".sd", ".mol"):
        print(SDF_NOTE)
    out = Path(cfg.output) if cfg.output else Path(output_dir) / "metrics.json"
    write_json(out, result)
    print(f"\nwrote {out}")
    return result
