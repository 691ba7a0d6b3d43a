"""Named molecule sources: ``qm9:<split>``, ``qm9_noh:<split>``, ``geom:<cache.npz>``, or a path
to an SDF/XYZ file or a folder of them."""

from __future__ import annotations

from pathlib import Path

from moldiff.data.elements import GEOM_VOCAB, QM9_VOCAB, VOCABULARIES, Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport


def load_source(spec: str, report: InputReport | None = None) -> tuple[MoleculeSet, list[str] | None, Vocabulary]:
    """Molecules, their names (None for datasets) and the natural vocabulary of a source."""
    report = report if report is not None else InputReport()
    head, _, rest = spec.partition(":")
    if head in ("qm9", "qm9_noh") and rest:
        from moldiff.data.qm9 import load_qm9

        mols = load_qm9(rest, remove_h=head == "qm9_noh")
        report.n_records += len(mols)
        return mols, None, QM9_VOCAB
    if head == "geom" and rest:
        from moldiff.data.geom import load_geom

        mols = load_geom(rest)
        report.n_records += len(mols)
        return mols, None, GEOM_VOCAB
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"input {spec!r} is neither a file/folder nor a dataset (qm9:<split>, qm9_noh:<split>, geom:<cache.npz>)"
        )
    from moldiff.data.user import read_molecules

    mols, names = read_molecules(spec, report)
    return mols, names, infer_vocabulary(mols)


def infer_vocabulary(mols: MoleculeSet) -> Vocabulary:
    """QM9's vocabulary when every element fits it, else GEOM-Drugs'.

    Elements in neither vocabulary don't decide: one stray Se must not switch a QM9-like file to
    GEOM's rules (it is rejected as an unknown element either way).
    """
    known = GEOM_VOCAB.encode(mols.numbers) >= 0
    return QM9_VOCAB if (QM9_VOCAB.encode(mols.numbers[known]) >= 0).all() else GEOM_VOCAB


def vocabulary(name: str) -> Vocabulary:
    if name not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {name!r}; use one of {', '.join(VOCABULARIES)} or auto")
    return VOCABULARIES[name]
