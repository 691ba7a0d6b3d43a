"""GEOM-Drugs conformers from the two published formats, streamed into one ``MoleculeSet`` cache.

The data: the GEOM dataset (Axelrod & Gomez-Bombarelli), Harvard Dataverse, doi:10.7910/DVN/JNGTDF
(CC0). Download and extract one of

* ``rdkit_folder.tar.gz``: ``rdkit_folder/summary_drugs.json`` (SMILES -> summary with a
  ``pickle_path`` such as ``drugs/<name>.pickle``) plus one pickle per molecule whose
  ``conformers`` each hold an RDKit ``rd_mol`` (explicit H, one conformer) and ``totalenergy``;
* ``drugs_crude.msgpack.tar.gz``: ``drugs_crude.msgpack``, a stream of msgpack maps
  SMILES -> molecule, whose ``conformers`` each hold ``xyz`` rows ``[Z, x, y, z]`` (Å).

Per molecule, conformers are sorted by ``totalenergy`` (Hartree) ascending and the lowest ``k``
usable ones kept (EDM keeps 30). Everything streams molecule by molecule and the cache is written
chunk by chunk, so memory stays bounded by one molecule (one msgpack map) plus one output chunk.
Every unusable input is counted in an ``InputReport``: unreadable or missing pickles and
malformed records (``UNREADABLE``), atoms-free conformers (``EMPTY``), non-finite coordinates
(``NONFINITE``) and elements outside EDM's GEOM vocabulary (``UNKNOWN_ELEMENT``). A report record
is one conformer examined (a molecule whose pickle cannot be read counts as one record);
conformers past the k-th usable one are not examined.

Only read an ``rdkit_folder`` from a trusted source: its pickles can run code when loaded.

Record decoding is in ``moldiff.data.geom_parsers``, the chunked .npz output in
``moldiff.data.npz_writer``; ``scripts/build_geom_cache.py`` builds a cache from the command line.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.data import report as R
from moldiff.data.elements import GEOM_VOCAB
from moldiff.data.geom_parsers import (
    get_key,
    iter_json_object,
    msgpack_conformer,
    rdkit_conformer,
)
from moldiff.data.molecules import MoleculeSet
from moldiff.data.npz_writer import NpzStreamWriter
from moldiff.data.paths import cache_dir
from moldiff.files import atomic_write

EDM_CONFORMERS_PER_MOLECULE = 30

# (smiles, atomic numbers (n,), positions (n, 3) float32 Å, totalenergy Hartree, Boltzmann weight)
Conformer = tuple[str, np.ndarray, np.ndarray, float, float]
# internally a Conformer plus its per-atom formal charges (None when the record has no molecule
# graph, as msgpack's xyz rows); the public readers yield the first five fields
_Kept = tuple[str, np.ndarray, np.ndarray, float, float, "np.ndarray | None"]

_GEOM_TABLE = GEOM_VOCAB.index_table()


# --- shared per-molecule logic -------------------------------------------------------------------
def _as_str(s: Any) -> str:
    return s.decode("utf-8", "replace") if isinstance(s, (bytes, bytearray)) else str(s)


def _finite_float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _lowest_conformers(
    smiles: str,
    conformers: Any,
    k: int | None,
    report: R.InputReport,
    extract: Callable[[Any], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
) -> list[_Kept]:
    """The ``k`` lowest-energy usable conformers of one molecule, ascending; the rest counted.
    ``extract`` gives (numbers, positions, formal charges or None) of a record."""
    if not isinstance(conformers, list) or not conformers:
        report.n_records += 1
        report.reject(R.EMPTY, smiles, "no conformers")
        return []
    ranked = []
    for i, conf in enumerate(conformers):
        e = _finite_float(get_key(conf, "totalenergy"))
        ranked.append((math.inf if e is None else e, i, conf, e))
    ranked.sort(key=lambda t: (t[0], t[1]))  # stable on ties: source order
    kept: list[_Kept] = []
    for _, i, conf, energy in ranked:
        if k is not None and len(kept) >= k:
            break
        report.n_records += 1
        gid = get_key(conf, "geom_id")
        where = f"{smiles} conformer {gid if gid is not None else i}"
        if energy is None:
            report.reject(R.UNREADABLE, where, "no finite totalenergy")
            continue
        try:
            numbers, positions, formal = extract(conf)
        except Exception as exc:  # noqa: BLE001 - a malformed record must not stop the stream
            report.reject(R.UNREADABLE, where, f"{type(exc).__name__}: {exc}"[:200])
            continue
        if len(numbers) == 0:
            report.reject(R.EMPTY, where)
            continue
        if not np.isfinite(positions).all():
            report.reject(R.NONFINITE, where)
            continue
        known = (numbers > 0) & (numbers < len(_GEOM_TABLE))
        known[known] = _GEOM_TABLE[numbers[known]] >= 0
        if not known.all():
            bad = sorted({int(z) for z in numbers[~known]})
            report.reject(R.UNKNOWN_ELEMENT, where, f"atomic numbers {bad} not in {GEOM_VOCAB.name}")
            continue
        weight = _finite_float(get_key(conf, "boltzmannweight"))
        kept.append((smiles, numbers, positions, energy, math.nan if weight is None else weight, formal))
    return kept


def _flatten(molecules: Iterator[list[_Kept]]) -> Iterator[Conformer]:
    for kept in molecules:
        for c in kept:
            yield c[:5]


def _rdkit_record(conf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ``rdkit_folder`` conformer with its formal charges, read from the same ``rd_mol``."""
    numbers, positions = rdkit_conformer(conf)
    formal = np.array([a.GetFormalCharge() for a in get_key(conf, "rd_mol").GetAtoms()], dtype=np.int8)
    return numbers, positions, formal


def _msgpack_record(conf: Any) -> tuple[np.ndarray, np.ndarray, None]:
    return (*msgpack_conformer(conf), None)  # xyz rows carry no charges: the SMILES gives the total


def smiles_charge(smiles: str) -> float:
    """Total charge of a SMILES, the sum of its atoms' formal charges; NaN when it cannot be parsed
    (the corrected protocol then searches the charge). Not sanitised: the charges are written in
    the SMILES itself, and GEOM has SMILES that RDKit parses but will not sanitise."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():  # an unparsable SMILES becomes NaN, not a printed error
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return math.nan if mol is None else float(sum(a.GetFormalCharge() for a in mol.GetAtoms()))


def _check_k(k: int | None) -> None:
    if k is not None and k < 1:
        raise ValueError(f"conformers_per_molecule must be >= 1 or None (all), got {k}")


# --- rdkit_folder ------------------------------------------------------------------------------
def _summary_path(folder: Path) -> Path:
    if folder.is_file():
        return folder
    preferred = folder / "summary_drugs.json"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("summary*.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected summary_drugs.json (found {[p.name for p in found]})")
    return found[0]


def _rdkit_molecules(folder, k, report, max_molecules) -> Iterator[list[_Kept]]:
    summary = _summary_path(Path(folder))
    base = summary.parent  # pickle_path is relative to the rdkit_folder directory
    for n, (smiles, entry) in enumerate(iter_json_object(summary)):
        if max_molecules is not None and n >= max_molecules:
            return
        rel = get_key(entry, "pickle_path")
        if not rel:
            report.n_records += 1
            report.reject(R.EMPTY, smiles, "no pickle_path in summary (no conformers)")
            continue
        try:
            with open(base / rel, "rb") as f:
                record = pickle.load(f)
            conformers = get_key(record, "conformers")
        except FileNotFoundError:
            report.n_records += 1
            report.reject(R.UNREADABLE, smiles, f"missing pickle {rel}")
            continue
        except Exception as exc:  # noqa: BLE001 - corrupt or truncated pickle: count it, read on
            report.n_records += 1
            report.reject(R.UNREADABLE, smiles, f"pickle {rel}: {type(exc).__name__}")
            continue
        kept = _lowest_conformers(smiles, conformers, k, report, _rdkit_record)
        if kept:
            yield kept


def read_geom_rdkit_folder(
    folder: str | os.PathLike,
    conformers_per_molecule: int | None = EDM_CONFORMERS_PER_MOLECULE,
    report: R.InputReport | None = None,
    max_molecules: int | None = None,
) -> Iterator[Conformer]:
    """Lowest-energy conformers from an extracted ``rdkit_folder`` (or its summary JSON).

    Yields ``(smiles, numbers, positions, totalenergy, boltzmann_weight)`` molecule by molecule,
    each molecule's conformers in ascending energy. ``max_molecules`` stops after that many
    summary entries (read or not); ``conformers_per_molecule=None`` keeps all.

    GEOM's ``rdkit_folder`` files are Python pickles by design, so loading one can run code; only
    load them from trusted sources.
    """
    _check_k(conformers_per_molecule)  # here, not lazily at the first next()
    report = R.InputReport() if report is None else report
    return _flatten(_rdkit_molecules(folder, conformers_per_molecule, report, max_molecules))


# --- msgpack -------------------------------------------------------------------------------------
def _msgpack_molecules(path, k, report, max_molecules) -> Iterator[list[_Kept]]:
    import msgpack

    path = Path(path)
    size = path.stat().st_size
    n = 0
    with open(path, "rb") as f:
        # One map (a few thousand molecules) must fit in the buffer; msgpack's 100 MiB default may not.
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=2**31 - 1)
        end = 0
        while True:
            try:
                chunk = next(unpacker)
            except StopIteration:
                break
            except (ValueError, msgpack.exceptions.UnpackException) as exc:
                # A corrupt byte desynchronises the stream: nothing after it can be trusted.
                report.n_records += 1
                report.reject(R.UNREADABLE, f"{path.name} @ {end}", f"rest of stream: {type(exc).__name__}")
                return
            where, end = f"{path.name} @ {end}", unpacker.tell()
            if not isinstance(chunk, dict):
                report.n_records += 1
                report.reject(R.UNREADABLE, where, f"{type(chunk).__name__}, not a map")
                continue
            for key, mol in chunk.items():
                if max_molecules is not None and n >= max_molecules:
                    return
                n += 1
                smiles = _as_str(key)
                if not isinstance(mol, dict):
                    report.n_records += 1
                    report.reject(R.UNREADABLE, smiles, f"{type(mol).__name__}, not a map")
                    continue
                kept = _lowest_conformers(smiles, get_key(mol, "conformers"), k, report, _msgpack_record)
                if kept:
                    yield kept
        if end != size:  # iteration ends quietly on a truncated last map
            report.n_records += 1
            report.reject(R.UNREADABLE, f"{path.name} @ {end}", f"truncated: {size - end} trailing bytes")


def read_geom_msgpack(
    path: str | os.PathLike,
    conformers_per_molecule: int | None = EDM_CONFORMERS_PER_MOLECULE,
    report: R.InputReport | None = None,
    max_molecules: int | None = None,
) -> Iterator[Conformer]:
    """Lowest-energy conformers from ``drugs_crude.msgpack`` (or ``drugs_featurized.msgpack``).

    Same yield as :func:`read_geom_rdkit_folder`; str and bytes keys both work.
    """
    _check_k(conformers_per_molecule)  # here, not lazily at the first next()
    report = R.InputReport() if report is None else report
    return _flatten(_msgpack_molecules(path, conformers_per_molecule, report, max_molecules))


# --- cache ---------------------------------------------------------------------------------------
_PROPERTY_DTYPES = {
    "mol_id": np.int64,
    "energy": np.float64,
    "boltzmann_weight": np.float64,
    "conformer_rank": np.int32,
}
# Charge fields, written by builders that know them (scripts/build_conformers.py, and
# build_geom_cache since issue 17): the total charge per conformer as the ``charge`` property the
# corrected protocol reads (NaN = not given), and per-atom formal charges beside ``numbers`` (not
# from msgpack). Older caches lack both and still load;
# MoleculeSet.load reads the property and ignores the per-atom array (load_geom_formal_charges).
_CHARGE_DTYPES = {"prop.charge": np.float64, "formal_charges": np.int8}


def cache_dtypes(charges: bool = False) -> dict[str, type]:
    """The cache's arrays and dtypes, in archive order (``positions`` is (A, 3), the rest 1-D)."""
    dtypes = {"numbers": np.int16, "positions": np.float32, "offsets": np.int64}
    dtypes.update({f"prop.{k}": v for k, v in _PROPERTY_DTYPES.items()})
    return {**dtypes, **_CHARGE_DTYPES} if charges else dtypes


def default_cache_path(conformers_per_molecule: int | None = EDM_CONFORMERS_PER_MOLECULE) -> Path:
    k = "all" if conformers_per_molecule is None else conformers_per_molecule
    return cache_dir("geom_drugs") / f"geom_drugs_k{k}.npz"


def smiles_path(path: str | os.PathLike) -> Path:
    """The SMILES list written beside a cache: line ``i`` is the SMILES of ``mol_id == i``."""
    return Path(f"{path}.smiles.txt")


def _detect_format(source: Path) -> str:
    if source.is_dir() or source.suffix == ".json":
        return "rdkit_folder"
    if source.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise ValueError(f"{source}: extract the archive first and pass the folder or .msgpack file")
    return "msgpack"


def build_geom_cache(
    source: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    fmt: str = "auto",
    conformers_per_molecule: int | None = EDM_CONFORMERS_PER_MOLECULE,
    report: R.InputReport | None = None,
    chunk: int = 10000,
    max_molecules: int | None = None,
) -> tuple[Path, R.InputReport]:
    """Stream GEOM conformers into one ``MoleculeSet`` .npz; returns ``(path, report)``.

    One entry per kept conformer, with properties ``mol_id`` (line of ``<out>.smiles.txt``),
    ``energy`` (totalenergy, Hartree), ``boltzmann_weight``, ``conformer_rank`` (0 = lowest
    energy) and ``charge`` (total charge, the sum of formal charges: of the conformer's ``rd_mol``
    for an ``rdkit_folder``, of the SMILES key for msgpack, NaN if that does not parse). An
    ``rdkit_folder`` cache also holds per-atom ``formal_charges``, as ``scripts/build_conformers.py``
    writes them; msgpack's xyz rows cannot be matched to the SMILES' atoms, so it has none.
    Output is buffered ``chunk`` conformers at a time; both files appear atomically.
    """
    _check_k(conformers_per_molecule)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    source = Path(source)
    fmt = _detect_format(source) if fmt == "auto" else fmt
    molecules = {"rdkit_folder": _rdkit_molecules, "msgpack": _msgpack_molecules}.get(fmt)
    if molecules is None:
        raise ValueError(f"fmt must be 'auto', 'rdkit_folder' or 'msgpack', got {fmt!r}")
    out = Path(out_path) if out_path is not None else default_cache_path(conformers_per_molecule)
    report = R.InputReport() if report is None else report

    dtypes = cache_dtypes(charges=True)
    if fmt == "msgpack":
        del dtypes["formal_charges"]
    writer = NpzStreamWriter(out, dtypes, {"positions": 3})
    smi_out = smiles_path(out)
    try:
        writer.append("offsets", np.zeros(1))
        n_atoms_written = 0
        buf: list[tuple[int, int, _Kept, float]] = []

        def flush() -> None:
            nonlocal n_atoms_written
            if not buf:
                return
            counts = np.array([len(c[2][1]) for c in buf], dtype=np.int64)
            writer.append("numbers", np.concatenate([c[2][1] for c in buf]))
            writer.append("positions", np.concatenate([c[2][2] for c in buf]))
            writer.append("offsets", n_atoms_written + np.cumsum(counts))
            n_atoms_written += int(counts.sum())
            writer.append("prop.mol_id", np.array([c[0] for c in buf]))
            writer.append("prop.conformer_rank", np.array([c[1] for c in buf]))
            writer.append("prop.energy", np.array([c[2][3] for c in buf]))
            writer.append("prop.boltzmann_weight", np.array([c[2][4] for c in buf]))
            writer.append("prop.charge", np.array([c[3] for c in buf], dtype=np.float64))
            if "formal_charges" in dtypes:
                writer.append("formal_charges", np.concatenate([c[2][5] for c in buf]))
            buf.clear()

        with atomic_write(smi_out, "w", encoding="utf-8") as smi:
            for mol_id, kept in enumerate(molecules(source, conformers_per_molecule, report, max_molecules)):
                smi.write(kept[0][0] + "\n")
                from_smiles = smiles_charge(kept[0][0]) if kept[0][5] is None else None  # once a molecule
                for rank, conf in enumerate(kept):
                    buf.append((mol_id, rank, conf, from_smiles if conf[5] is None else float(conf[5].sum())))
                    if len(buf) >= chunk:
                        flush()
            flush()
        writer.finish()  # the .npz last: its presence means the SMILES list is complete too
    except BaseException:
        writer.close()
        raise
    return out, report


def load_geom(path: str | os.PathLike | None = None) -> MoleculeSet:
    """A cache written by :func:`build_geom_cache` (default: the k=30 cache under ``datasets/``)."""
    return MoleculeSet.load(default_cache_path() if path is None else path)


def load_geom_formal_charges(path: str | os.PathLike) -> np.ndarray | None:
    """(A,) per-atom formal charges, aligned with ``load_geom(path).numbers``; None for a cache
    without them (GEOM's own records, older caches). A cache with bonds keeps them under
    ``MoleculeSet``'s name ``charges``."""
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in ("formal_charges", "charges") if k in f.files), None)
        return None if key is None else f[key]


def load_geom_smiles(path: str | os.PathLike | None = None) -> list[str]:
    """SMILES by ``mol_id`` for a cache written by :func:`build_geom_cache`."""
    p = smiles_path(default_cache_path() if path is None else path)
    return p.read_text(encoding="utf-8").splitlines()

