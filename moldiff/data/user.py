"""Users' own molecules from SDF, XYZ, or a folder of them, as a dataset (a ``MoleculeSet``).

SDF records are split at ``$$$$`` and parsed by RDKit (``MolFromMolBlock``, without sanitising, so
a molecule RDKit finds chemically odd is still read: judging chemistry is the metrics' job). XYZ
goes through ASE. Unreadable records are counted in the ``InputReport`` and skipped; the rest is read.

Each molecule's total charge is kept as the ``charge`` property: the sum of an SDF record's formal
charges when any atom carries one, NaN (not given) otherwise. When every record is an SDF record,
the set also carries each record's bonds (single, double, triple, aromatic) and per-atom formal
charges as written (``MoleculeSet.bonds``, ``.charges``): the metrics of the written graph read
them; a record with another bond type (dative, query) is counted as unreadable. A record without a charged atom may
be neutral or come from a writer that drops charges (EDM-style bond tables, ``samples.sdf``), and
XYZ has no charges, so for those the evaluation searches the charge, neutral first.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np

from moldiff.data import report as R
from moldiff.data.elements import GEOM_VOCAB, QM9_VOCAB, Vocabulary, symbol_to_number
from moldiff.data.molecules import MoleculeSet

SUFFIXES = (".sdf", ".sd", ".mol", ".xyz", ".extxyz")
_BOND_CODES: dict = {}  # RDKit bond type -> MoleculeSet order code, filled on first read (RDKit is imported lazily)


def _sdf_records(path: Path):
    """The text of each record: the lines up to a ``$$$$`` line (a trailing record may lack it).

    Split here rather than by RDKit's supplier, which after a record it cannot parse skips ahead
    and can swallow the next ones: two garbage records came back as one.
    """
    lines: list[bytes] = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip() == b"$$$$":
                yield b"".join(lines).decode("utf-8", errors="replace")
                lines = []
            else:
                lines.append(line)
    if any(line.strip() for line in lines):
        yield b"".join(lines).decode("utf-8", errors="replace")


def _read_sdf(path: Path, report: R.InputReport):
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    if not _BOND_CODES:
        _BOND_CODES.update({Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: 4})
    for k, block in enumerate(_sdf_records(path)):
        report.n_records += 1
        where = f"{path.name}#{k}"
        mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False)
        if mol is None:
            report.reject(R.UNREADABLE, where, "RDKit could not parse the record")
            continue
        if mol.GetNumConformers() == 0:
            if mol.GetNumAtoms() == 0:
                yield where, np.zeros(0, np.int64), np.zeros((0, 3)), np.nan
            else:
                report.reject(R.UNREADABLE, where, "no coordinates")
            continue
        bonds = []
        for bond in mol.GetBonds():
            code = _BOND_CODES.get(bond.GetBondType())
            if code is None:
                break
            i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
            bonds.append((i, j, code))
        else:
            numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
            name = mol.GetProp("_Name") if mol.HasProp("_Name") and mol.GetProp("_Name") else where
            charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
            yield (name, numbers, mol.GetConformer().GetPositions(), float(sum(charges)) if any(charges) else np.nan,
                   (np.array(sorted(bonds), np.int32).reshape(-1, 3), np.array(charges, np.int8)))
            continue
        report.reject(R.UNREADABLE, where, f"unsupported bond type {bond.GetBondType()}")


def _read_xyz(path: Path, report: R.InputReport):
    """Frame by frame, so one bad frame costs one record (ASE would fail the whole file).
    XYZ gives no charge (NaN)."""

    import ase.io

    lines = path.read_text().splitlines()
    pos, k = 0, 0
    while pos < len(lines):
        if not lines[pos].strip():
            pos += 1
            continue
        where = f"{path.name}#{k}"
        report.n_records += 1
        k += 1
        try:
            n = int(lines[pos].split()[0])
        except (ValueError, IndexError):
            report.reject(R.UNREADABLE, where, f"line {pos + 1}: atom count expected")
            break  # the frame boundaries are lost; later frames can't be located
        frame = lines[pos : pos + n + 2]
        pos += n + 2
        if n == 0:
            yield where, np.zeros(0, np.int64), np.zeros((0, 3)), np.nan
            continue
        try:
            atoms = ase.io.read(StringIO("\n".join(frame) + "\n"), format="xyz")
            numbers = atoms.get_atomic_numbers()
        except Exception as err:  # ASE raises many types on malformed text
            # Unknown symbols make ASE fail; read them ourselves so they count as unknown elements.
            rows = [r.split() for r in frame[2:]]
            if len(rows) == n and all(len(r) >= 4 for r in rows):
                try:
                    xyz = np.array([[float(v) for v in r[1:4]] for r in rows])
                    yield where, np.array([symbol_to_number(r[0]) for r in rows]), xyz, np.nan
                    continue
                except ValueError:
                    pass
            report.reject(R.UNREADABLE, where, str(err).splitlines()[0][:80] if str(err) else type(err).__name__)
            continue
        yield where, numbers, atoms.get_positions(), np.nan


def read_molecules(path, report: R.InputReport | None = None) -> tuple[MoleculeSet, list[str]]:
    """All molecules in an SDF/XYZ file or a folder of them (sorted by name), with their names.

    Records that cannot be read are counted in ``report``; checking elements and coordinates is
    ``MoleculeSet.checked``'s job. The ``charge`` property is each molecule's total charge, NaN
    where the file does not give it (module docstring).
    """
    report = report if report is not None else R.InputReport()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"{path} holds no {', '.join(SUFFIXES)} files")
    names, molecules, charges, graphs = [], [], [], []
    for f in files:
        suffix = f.suffix.lower()
        if suffix not in SUFFIXES:
            raise ValueError(f"{f}: unsupported format {suffix!r}; use one of {', '.join(SUFFIXES)}")
        reader = _read_xyz if suffix in (".xyz", ".extxyz") else _read_sdf
        for name, numbers, positions, charge, *graph in reader(f, report):
            names.append(name)
            molecules.append((numbers, positions))
            charges.append(charge)
            graphs.append(graph[0] if graph else None)
    mols = MoleculeSet.from_list(molecules, charge=np.array(charges, np.float64))
    if graphs and all(g is not None for g in graphs):  # bonds as written, only when every record has them
        mols.charges = np.concatenate([q for _, q in graphs])
        mols.bonds = np.concatenate([b for b, _ in graphs])
        mols.bond_offsets = np.concatenate([[0], np.cumsum([len(b) for b, _ in graphs])])
        mols.__post_init__()
    return mols, names


def user_dataset(path, vocab=None, report: R.InputReport | None = None, save_to=None) -> tuple[MoleculeSet, list[str], R.InputReport]:
    """Users' molecules made fit for training or evaluation: read, checked, optionally cached.

    ``vocab``: a ``Vocabulary``, or None to infer QM9's or GEOM's from the elements. Every record
    left out is counted in the returned report (``report.to_dict()`` for a summary).
    """
    report = report if report is not None else R.InputReport()
    mols, names = read_molecules(path, report)
    vocab = vocab if vocab is not None else infer_vocabulary(mols)
    mols, kept = mols.checked(vocab, report, names, return_index=True)
    if save_to is not None:
        mols.save(save_to)
    return mols, [names[i] for i in kept], report


def infer_vocabulary(mols: MoleculeSet) -> Vocabulary:
    """QM9's vocabulary when every element fits it, else GEOM-Drugs'.

    Elements in neither vocabulary don't decide: one stray Se must not switch a QM9-like file to
    GEOM's rules (it is rejected as an unknown element either way).
    """
    known = GEOM_VOCAB.encode(mols.numbers) >= 0
    return QM9_VOCAB if (QM9_VOCAB.encode(mols.numbers[known]) >= 0).all() else GEOM_VOCAB
