"""The evaluation job behind ``scripts/evaluate.py``: load, evaluate, print a table, write JSON."""

from __future__ import annotations

import json
from pathlib import Path

from moldiff.data.report import InputReport
from moldiff.data.elements import VOCABULARIES, vocabulary
from moldiff.data.sources import load_source
from moldiff.io.writers import atomic_write
from moldiff.metrics.evaluate import PROTOCOLS, evaluate
from moldiff.metrics.novelty import training_smiles
from moldiff.metrics.reference import reference_stats

ROWS = [
    ("atom_stability", "atom stability"),
    ("molecule_stability", "molecule stability"),
    ("validity", "validity"),
    ("uniqueness", "uniqueness"),
    ("valid_and_unique", "valid & unique"),
    ("novelty", "novelty"),
    ("connectivity", "connected"),
]


def check_config(cfg) -> None:
    """Fail before any work on a bad value (Hydra already rejects unknown keys)."""
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"protocols: unknown {bad}; choose from {list(PROTOCOLS)}")
    if cfg.vocabulary != "auto" and cfg.vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {cfg.vocabulary!r}; use one of {', '.join(VOCABULARIES)} or auto")
    for key in ("posebusters", "xtb", "reference_max"):
        if int(cfg[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
    if cfg.novelty is not None and cfg.novelty not in ("qm9:train", "qm9_noh:train"):
        raise ValueError(f"novelty: use qm9:train, qm9_noh:train or null, got {cfg.novelty!r}")


def format_table(result: dict) -> str:
    protos = [p for p in PROTOCOLS if p in result]
    lines = [f"{'metric (%)':<22}" + "".join(f"{p:>12}" for p in protos)]
    for key, label in ROWS:
        if any(key in result[p] for p in protos):
            lines.append(f"{label:<22}" + "".join(f"{100 * result[p][key]:>12.2f}" if key in result[p] else f"{'-':>12}" for p in protos))
    d = result.get("distribution")
    if d:
        lines.append("")
        lines.append(f"atom type TV {d['atom_type_tv']:.4f} | atom count TV {d['atom_count_tv']:.4f} | "
                     f"bond length W1 {d['bond_length_w1']['weighted_mean']:.4f} Å | bond angle W1 {d['bond_angle_w1']['weighted_mean']:.3f}°")
    inp = result["input"]
    lines.append("")
    lines.append(f"{result['n_molecules']} molecules, {result['n_evaluated']} evaluated ({result['vocabulary']} vocabulary); "
                 f"rejected: {inp['rejected'] or 'none'}; flagged: {inp['flagged'] or 'none'}")
    return "\n".join(lines)


def run_evaluation(cfg, output_dir: str | Path) -> dict:
    check_config(cfg)
    report = InputReport()
    mols, names, natural = load_source(cfg.input, report)
    vocab = natural if cfg.vocabulary == "auto" else vocabulary(cfg.vocabulary)
    reference = None
    if cfg.reference:
        reference = reference_stats(cfg.reference, int(cfg.reference_max), cfg.workers)
    train = None
    if cfg.novelty:
        remove_h = cfg.novelty.startswith("qm9_noh")
        train = {p: training_smiles(p, remove_h=remove_h, workers=cfg.workers) for p in cfg.protocols}
    result = evaluate(
        mols, vocab, report, reference, train, tuple(cfg.protocols), cfg.workers, int(cfg.posebusters), int(cfg.xtb), names
    )
    result["source"] = cfg.input
    print(format_table(result))
    out = Path(cfg.output) if cfg.output else Path(output_dir) / "metrics.json"
    with atomic_write(out) as f:
        json.dump(result, f, indent=2, default=float)
    print(f"\nwrote {out}")
    return result
