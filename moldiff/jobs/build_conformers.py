"""The conformer dataset build behind ``scripts/build_conformers.py``: a SMILES file, or the MOSES
splits read from the ``molsets`` wheel (``moldiff.data.moses``), to caches in GEOM-Drugs' format,
over worker processes; each molecule's conformers and what is counted about them are
``moldiff.chem.conformers``'s.

The build is resumable: rows are cut into chunks, each chunk's result is written atomically as a
shard under ``<out>.parts/`` by the worker that made it, and only when every shard exists are they
merged, in row order, into the cache (the full set, plus train/val caches split by molecule). An
interrupted build rerun with the same settings builds only the missing chunks; the merged files
are the same bytes as an uninterrupted build's. Shards are .npz written with ``allow_pickle``
off, so reading one never runs code.

Cache fields (``moldiff.data.geom``): per conformer ``numbers``, ``positions`` (Å, float32) and the
properties ``mol_id`` (line of ``<out>.smiles.txt``), ``energy`` (Hartree: GFN2-xTB total energy
with the xTB polish, GEOM's quantity; MMFF94 energy / 627.509 otherwise, meaningful only relative
to the same molecule's other conformers), ``boltzmann_weight`` (298.15 K over the kept conformers
of the molecule, not CREST's ensemble weights), ``conformer_rank`` and ``charge`` (total charge),
plus per-atom ``formal_charges``. A build with ``bonds`` (always for MOSES) instead stores the
per-atom formal charges and the SMILES' Kekulé bonds in ``MoleculeSet``'s own fields (``charges``,
``bonds``, ``bond_offsets``: what ``StateDataset`` trains the bond model on, in the convention of
QM9's bond labels), so ``MoleculeSet.load`` returns them with the molecules.

What is written here is the chunked, resumable bookkeeping and the cache layout, which no package
provides for GEOM's format.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np

from moldiff.chem.conformers import ConformerSettings, molecule_conformers
from moldiff.chem.xtb import require_tblite, single_thread_worker
from moldiff.data import moses
from moldiff.data import report as R
from moldiff.data.geom import cache_dtypes, smiles_path
from moldiff.data.npz_writer import NpzStreamWriter
from moldiff.data.paths import cache_dir
from moldiff.files import AtomicFile, atomic_write

FORMAT_VERSION = 1  # of the caches; part of every build's identity
SHARD_VERSION = 2  # of the shards (2: with bonds); part of the resume check only


# --- input -------------------------------------------------------------------------------------
def read_smiles(path: str | os.PathLike) -> list[str]:
    """SMILES by row: a .csv's ``smiles`` column (any case), else the first word of each
    non-empty, non-``#`` line (a header word ``smiles`` is skipped)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            column = next((c for c in reader.fieldnames or () if c.strip().lower() == "smiles"), None)
            if column is None:
                raise ValueError(f"{path}: no 'smiles' column (columns: {reader.fieldnames})")
            return [(row[column] or "").strip() for row in reader]
        rows = [line.split()[0] for line in f if line.strip() and not line.lstrip().startswith("#")]
    return rows[1:] if rows and rows[0].lower() == "smiles" else rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions(settings: ConformerSettings) -> dict:
    """The packages the conformers depend on: another version may give other coordinates."""
    import rdkit

    return {"rdkit": rdkit.__version__, **({"tblite": version("tblite")} if settings.xtb else {})}


# --- chunks (shards) ---------------------------------------------------------------------------
def _report_from_dict(d: dict) -> R.InputReport:
    rep = R.InputReport()
    rep.n_records = d["n_records"]
    rep.rejected.update(d["rejected"])
    rep.flagged.update(d["flagged"])
    rep.examples = list(d["examples"])
    return rep


def shard_path(parts: Path, chunk: int) -> Path:
    return parts / f"chunk_{chunk:05d}.npz"


def build_chunk(task: tuple) -> dict:
    """Build input entries ``start .. start + len(smiles)`` (``rows``: the row that seeds each one)
    and write their shard atomically (pool worker)."""
    from rdkit import rdBase

    chunk, start, smiles, rows, settings, parts = task
    settings = ConformerSettings(**settings)
    t, cpu = time.perf_counter(), time.process_time()
    molecules, conformers = R.InputReport(), R.InputReport()
    with rdBase.BlockLogs():  # failures are counted in the reports, not printed
        made = ((start + i, molecule_conformers(s, r, settings, molecules, conformers)) for i, (s, r) in enumerate(zip(smiles, rows)))
        built = [(i, m) for i, m in made if m is not None]
    entries = [i for i, _ in built]
    built = [m for _, m in built]
    meta = {"molecules": molecules.to_dict(), "conformers": conformers.to_dict(), "seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - cpu}  # CPU time: comparable on a busy machine, wall time is not
    arrays = {
        "entry": np.array(entries, np.int64),  # position in the build's input, not the seed row
        "charge": np.array([m.charge for m in built], np.int64),
        "n_atoms": np.array([len(m.numbers) for m in built], np.int64),
        "n_conformers": np.array([len(m.energies) for m in built], np.int64),
        "numbers": np.concatenate([m.numbers for m in built] or [np.zeros(0, np.int16)]),
        "formal_charges": np.concatenate([m.formal_charges for m in built] or [np.zeros(0, np.int8)]),
        "positions": np.concatenate([m.positions.reshape(-1, 3) for m in built] or [np.zeros((0, 3), np.float32)]),
        "energy": np.concatenate([m.energies for m in built] or [np.zeros(0)]),
        "weight": np.concatenate([m.weights for m in built] or [np.zeros(0)]),
        "n_bonds": np.array([len(m.bonds) for m in built], np.int64),
        "bonds": np.concatenate([m.bonds for m in built] or [np.zeros((0, 3), np.int32)]).astype(np.int32),
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),  # JSON as bytes: no pickle
    }
    with atomic_write(shard_path(Path(parts), chunk), "wb") as f:
        np.savez(f, **arrays)
    return {"chunk": chunk, "molecules": len(built), "conformers": int(arrays["n_conformers"].sum())}


def _read_shard(path: Path):
    """(meta, molecules) of a shard; molecules as (entry, numbers, formal, charge, positions (c, n, 3), energies,
    weights, bonds)."""
    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    meta = json.loads(a["meta"].tobytes().decode())
    mols, atom, conf, row_atom, bond = [], 0, 0, 0, 0
    for entry, q, n, c, b in zip(a["entry"], a["charge"], a["n_atoms"], a["n_conformers"], a["n_bonds"]):
        pos = a["positions"][row_atom: row_atom + c * n].reshape(c, n, 3)
        mols.append((int(entry), a["numbers"][atom: atom + n], a["formal_charges"][atom: atom + n], int(q), pos,
                     a["energy"][conf: conf + c], a["weight"][conf: conf + c], a["bonds"][bond: bond + b]))
        atom, conf, row_atom, bond = atom + n, conf + c, row_atom + c * n, bond + b
    return meta, mols


# --- the cache ---------------------------------------------------------------------------------
def bond_cache_dtypes() -> dict[str, type]:
    """A cache with bonds: GEOM's fields and total charge, per-atom charges and bonds under
    ``MoleculeSet``'s names (not GEOM's ``formal_charges``: the same numbers are not stored twice)."""
    dtypes = cache_dtypes(charges=True)
    del dtypes["formal_charges"]
    return {**dtypes, "charges": np.int8, "bonds": np.int32, "bond_offsets": np.int64}


class _CacheOut:
    """One cache in GEOM's format with the charge fields (and with ``bonds``, the bonds),
    written molecule by molecule; the SMILES list and the .npz appear atomically (the .npz last)."""

    def __init__(self, path: Path, bonds: bool = False):
        self.path, self.bonds = path, bonds
        self.writer = NpzStreamWriter(path, bond_cache_dtypes() if bonds else cache_dtypes(charges=True),
                                      {"positions": 3, "bonds": 3})
        self.smiles_out = smiles_path(path)
        self.smiles_file = AtomicFile(self.smiles_out, "w", encoding="utf-8")  # open until finish() / close()
        self.smiles = self.smiles_file.file
        self.writer.append("offsets", np.zeros(1))
        if bonds:
            self.writer.append("bond_offsets", np.zeros(1))
        self.n_atoms = self.n_molecules = self.n_conformers = self.n_bonds = 0

    def add(self, smiles: str, numbers, formal, charge: int, positions, energies, weights, bonds) -> None:
        c, n = positions.shape[:2]
        w = self.writer
        w.append("numbers", np.tile(numbers, c))
        w.append("positions", positions.reshape(-1, 3))
        w.append("offsets", self.n_atoms + n * np.arange(1, c + 1))
        w.append("prop.mol_id", np.full(c, self.n_molecules))
        w.append("prop.energy", energies)
        w.append("prop.boltzmann_weight", weights)
        w.append("prop.conformer_rank", np.arange(c))
        w.append("prop.charge", np.full(c, charge))
        if self.bonds:  # every conformer is a molecule of the set, with its own copy of the graph
            w.append("charges", np.tile(formal, c))
            w.append("bonds", np.tile(bonds, (c, 1)))
            w.append("bond_offsets", self.n_bonds + len(bonds) * np.arange(1, c + 1))
            self.n_bonds += c * len(bonds)
        else:
            w.append("formal_charges", np.tile(formal, c))
        self.smiles.write(smiles + "\n")
        self.n_atoms += c * n
        self.n_molecules += 1
        self.n_conformers += c

    def finish(self) -> None:
        self.smiles_file.commit()
        self.writer.finish()

    def close(self) -> None:
        self.smiles_file.discard()
        self.writer.close()


def default_output(name: str, settings: ConformerSettings) -> Path:
    """``<data>/<name>/cache/<name>_k<k>[_xtb].npz``."""
    return cache_dir(name) / f"{name}_k{settings.conformers}{'_xtb' if settings.xtb else ''}.npz"


def split_paths(out: Path) -> dict[str, Path]:
    return {"train": out.with_name(f"{out.stem}_train.npz"), "val": out.with_name(f"{out.stem}_val.npz")}


def report_path(out: Path) -> Path:
    return Path(f"{out}.report.json")


def val_rows(n_rows: int, val_fraction: float, seed: int) -> set[int]:
    """Rows of the validation molecules: the first ``round(val_fraction * n_rows)`` of a seeded
    permutation of all rows. A function of the input alone, so a molecule that fails to build
    does not move the others between sides."""
    return set(np.random.default_rng(seed).permutation(n_rows)[: round(val_fraction * n_rows)].tolist())


def _check_build(settings: ConformerSettings, workers: int, chunk: int) -> None:
    settings.check()
    if workers < 1 or chunk < 1:
        raise ValueError("workers and chunk must be >= 1")
    if settings.xtb:
        require_tblite()


def build_conformer_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    settings: ConformerSettings = ConformerSettings(),
    workers: int = 2,
    chunk: int = 16,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    overwrite: bool = False,
    log=None,
    bonds: bool = False,
) -> dict:
    """Build (or finish, or find up to date) the conformer cache of a SMILES file; returns the
    summary written to ``<out>.report.json``.

    ``out`` gets every built molecule; with ``val_fraction > 0`` also ``<stem>_train.npz`` and
    ``<stem>_val.npz`` (each a full cache with its own SMILES list), split by molecule.
    ``workers`` processes build ``chunk`` rows at a time. Rerunning after an interruption builds
    only the missing chunks; rerunning after a finished build with the same settings and input
    does nothing. ``overwrite`` rebuilds a finished build and discards an unfinished one of other
    settings (an unfinished one of the same settings is still resumed, so rerunning the same
    command with ``overwrite`` after an interruption loses nothing). ``bonds`` also stores each
    molecule's bonds and formal charges from its SMILES, for the bond model.
    """
    _check_build(settings, workers, chunk)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"no SMILES file {source}")
    smiles = read_smiles(source)
    # what the output depends on (not workers or chunk size); the shards also depend on the chunk size
    identity = {"format": FORMAT_VERSION, "input_sha256": _sha256(source), "settings": asdict(settings),
                "versions": _versions(settings), **({"bonds": True} if bonds else {})}
    val = val_rows(len(smiles), val_fraction, split_seed)
    labels = ["val" if r in val else "train" for r in range(len(smiles))] if val_fraction > 0 else [None] * len(smiles)
    outputs = {"all": out, **(split_paths(out) if val_fraction > 0 else {})}
    return _build(smiles, list(range(len(smiles))), labels, outputs, report_path(out), identity,
                  {"val_fraction": val_fraction, "seed": split_seed}, settings, workers, chunk, overwrite, bonds, log, str(source))


def moses_output(n: int | None, settings: ConformerSettings) -> Path:
    """The report path of a MOSES build; its caches are ``<stem>_<split>.npz`` beside it."""
    size = "all" if n is None else (f"{n // 1000}k" if n % 1000 == 0 else str(n))
    return cache_dir("moses") / f"moses_{size}_k{settings.conformers}{'_xtb' if settings.xtb else ''}.npz"


def moses_paths(out: Path) -> dict[str, Path]:
    return {s: out.with_name(f"{out.stem}_{s}.npz") for s in moses.SPLITS}


def build_moses_dataset(
    n: int | None,
    out: str | os.PathLike | None = None,
    settings: ConformerSettings = ConformerSettings(conformers=1),
    workers: int = 2,
    chunk: int = 16,
    seed: int = 0,
    overwrite: bool = False,
    wheel: str | os.PathLike | None = None,
    log=None,
) -> dict:
    """Conformer caches of ``n`` MOSES train molecules and of its test and scaffold-test splits
    in MOSES's proportions (``moldiff.data.moses.select_rows``; ``n=None``: all 1.94 M), one cache
    per MOSES split, with bonds and formal charges from the SMILES; returns the summary written to
    ``<out>.report.json`` (``out`` default: ``moses_output``; the caches are ``moses_paths(out)``).

    ``wheel``: a local copy of the molsets 0.3.1 wheel; by default it is downloaded once into
    ``<data>/moses/cache``. Either way its sha256 must be the pinned one. Resume, up-to-date check
    and ``overwrite`` as in :func:`build_conformer_dataset`.
    """
    _check_build(settings, workers, chunk)
    out = Path(out) if out is not None else moses_output(n, settings)
    log = log or (lambda msg: None)
    path = moses.check_wheel(wheel) if wheel is not None else moses.fetch_wheel()
    smiles, rows, labels, selection = moses.select_rows(path, n, seed)
    log(f"MOSES ({moses.WHEEL}, sha256 checked): " + ", ".join(f"{k} {v}" for k, v in selection["counts"].items())
        + " molecules selected")
    identity = {"format": FORMAT_VERSION, "source": {"moses": moses.WHEEL, "sha256": moses.SHA256, "n": n, **selection},
                "settings": asdict(settings), "versions": _versions(settings), "bonds": True}
    return _build(smiles, rows, labels, moses_paths(out), report_path(out), identity, {"moses": list(moses.SPLITS)},
                  settings, workers, chunk, overwrite, True, log, str(path), parts=out.with_name(out.name + ".parts"))


def _build(smiles: list[str], rows: list[int], labels: list, outputs: dict[str, Path], rep_path: Path, identity: dict,
           split: dict, settings: ConformerSettings, workers: int, chunk: int, overwrite: bool, bonds: bool, log,
           input_name: str, parts: Path | None = None) -> dict:
    """The build of input entries (SMILES, the row that seeds each, the output each goes to
    besides ``outputs["all"]`` when there is one): chunks as shards under ``parts``, then merged."""
    log = log or (lambda msg: None)
    shards = {**identity, "chunk": chunk, "shard_format": SHARD_VERSION}

    if not overwrite and rep_path.is_file() and all(p.is_file() for p in outputs.values()):
        old = json.loads(rep_path.read_text())
        if old.get("identity") == identity and old.get("split_settings") == split:
            log(f"{rep_path}: up to date (overwrite to rebuild)")
            return old

    parts = parts or outputs["all"].with_name(outputs["all"].name + ".parts")
    manifest = parts / "build.json"
    if manifest.is_file() and json.loads(manifest.read_text()) != shards:
        if not overwrite:
            raise ValueError(f"{parts} holds an unfinished build of other settings, input, package versions or chunk "
                             "size; rerun it with those, or pass overwrite to discard it")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        with atomic_write(manifest) as f:
            f.write(json.dumps(shards, indent=1))
    for stale in parts.glob("*.tmp"):  # a shard a killed worker was writing
        stale.unlink()

    t = time.perf_counter()
    n_chunks = math.ceil(len(smiles) / chunk)
    pending = [c for c in range(n_chunks) if not shard_path(parts, c).is_file()]
    if n_chunks - len(pending):
        log(f"resuming: {n_chunks - len(pending)} of {n_chunks} chunks already built")
    tasks = ((c, c * chunk, smiles[c * chunk: (c + 1) * chunk], rows[c * chunk: (c + 1) * chunk], asdict(settings), str(parts))
             for c in pending)
    done = n_chunks - len(pending)
    if workers == 1 or len(pending) <= 1:
        results = map(build_chunk, tasks)
        pool = None
    else:  # spawned: a forked worker can hang in tblite's OpenMP when the parent started one
        pool = mp.get_context("spawn").Pool(min(workers, len(pending)), initializer=single_thread_worker)
        results = pool.imap_unordered(build_chunk, tasks)
    try:
        for r in results:
            done += 1
            log(f"chunk {done}/{n_chunks}: {r['molecules']} molecules, {r['conformers']} conformers")
    finally:
        if pool is not None:
            pool.terminate()  # on an interruption, workers stop; finished shards stay
            pool.join()

    summary = _merge(parts, n_chunks, smiles, labels, outputs, bonds)
    summary.update(input=input_name, identity=identity, split_settings=split, chunk=chunk, workers=workers,
                   seconds=round(time.perf_counter() - t, 1), chunks_resumed=n_chunks - len(pending))
    with atomic_write(rep_path) as f:
        f.write(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(parts)
    return summary


def _merge(parts: Path, n_chunks: int, smiles: list[str], labels: list, outputs: dict[str, Path], bonds: bool) -> dict:
    """Shards in input order into the output caches; the summary of the whole build."""
    molecules, conformers = R.InputReport(), R.InputReport()
    wall = cpu = 0.0
    outs = {}
    built = written = 0
    try:
        outs = {k: _CacheOut(p, bonds) for k, p in outputs.items()}
        for c in range(n_chunks):
            meta, mols = _read_shard(shard_path(parts, c))
            molecules.merge(_report_from_dict(meta["molecules"]))
            conformers.merge(_report_from_dict(meta["conformers"]))
            wall += meta["seconds"]
            cpu += meta["cpu_seconds"]
            for entry, numbers, formal, q, pos, energies, weights, graph in mols:
                built += 1
                written += len(pos)
                for k in ("all", labels[entry]):
                    if k in outs:
                        outs[k].add(smiles[entry], numbers, formal, q, pos, energies, weights, graph)
        for o in outs.values():
            o.finish()
    except BaseException:
        for o in outs.values():
            o.close()
        raise
    return {
        "smiles": len(smiles),
        "molecules_built": built,
        "conformers_written": written,
        "molecules": molecules.to_dict(),
        "conformers": conformers.to_dict(),
        "outputs": {k: str(p) for k, p in outputs.items()},
        "split": {k: {"molecules": outs[k].n_molecules, "conformers": outs[k].n_conformers} for k in outs if k != "all"},
        "worker_seconds": round(wall, 1),
        "worker_cpu_seconds": round(cpu, 1),
    }


def summary_text(summary: dict) -> str:
    """A few lines for the terminal."""
    m, c = summary["molecules"], summary["conformers"]
    outputs = summary["outputs"]
    where = outputs["all"] if "all" in outputs else str(Path(next(iter(outputs.values()))).parent)
    lines = [
        f"{summary['molecules_built']} of {summary['smiles']} molecules built, {summary['conformers_written']} conformers"
        f" -> {where}",
        f"molecules left out: {m['rejected'] or 'none'}" + (f"; flagged: {m['flagged']}" if m["flagged"] else ""),
        f"conformers left out: {c['rejected'] or 'none'} (of {c['n_records']} embedded)",
    ]
    if summary.get("split"):
        s = summary["split"]
        lines.append(("split by molecule: " if "all" in outputs else "caches: ")
                     + ", ".join(f"{k} {v['molecules']} molecules / {v['conformers']} conformers" for k, v in s.items()
                                 if isinstance(v, dict)))
    lines.append(f"{summary['seconds']} s ({summary['worker_seconds']} s in workers, {summary['worker_cpu_seconds']} s CPU"
                 + (f", {summary['chunks_resumed']} chunks from an earlier run)" if summary["chunks_resumed"] else ")"))
    return "\n".join(lines)
