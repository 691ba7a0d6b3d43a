"""Named molecule sources: ``qm9:<split>``, ``qm9_noh:<split>``, ``geom:<cache.npz>``, or a path
to an SDF/XYZ file or a folder of them."""

from __future__ import annotations

from pathlib import Path

from moldiff.data.elements import GEOM_VOCAB, QM9_VOCAB, Vocabulary
from moldiff.data.geom import load_geom
from moldiff.data.molecules import MoleculeSet
from moldiff.data.qm9 import load_qm9
from moldiff.data.report import InputReport
from moldiff.data.user import infer_vocabulary, read_molecules


def load_source(spec: str, report: InputReport | None = None) -> tuple[MoleculeSet, list[str] | None, Vocabulary]:
    """Molecules, their names (None for datasets) and the natural vocabulary of a source."""
    report = report if report is not None else InputReport()
    head, _, rest = spec.partition(":")
    if head in ("qm9", "qm9_noh") and rest:
        mols = load_qm9(rest, remove_h=head == "qm9_noh")
        report.n_records += len(mols)
        return mols, None, QM9_VOCAB
    if head == "geom" and rest:
        mols = load_geom(rest)
        report.n_records += len(mols)
        return mols, None, GEOM_VOCAB
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"input {spec!r} is neither a file/folder nor a dataset (qm9:<split>, qm9_noh:<split>, geom:<cache.npz>)"
        )
    mols, names = read_molecules(spec, report)
    return mols, names, infer_vocabulary(mols)
