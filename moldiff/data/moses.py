"""The MOSES molecules (ZINC Clean Leads) read offline from the ``molsets`` 0.3.1 wheel.

MOSES (Polykovskiy et al., *Front. Pharmacol.* 11, 565644 (2020); MIT) ships its splits inside
its Python package as ``moses/dataset/data/{train,test,test_scaffolds}.csv.gz`` (one ``SMILES``
column: 1,584,663 / 176,074 / 176,225 molecules). The package's own dependencies do not install on
current Python, so the wheel is fetched as a file (``pip download --no-deps``, through pip so that
its index settings apply), checked against the pinned sha256 before anything in it is read, and
the CSVs are streamed out of the zip.

``select_rows`` draws a seeded subset of each split without ever holding a whole split: one pass
counts the rows, a second keeps only the chosen ones. Rows are numbered across the splits in
``SPLITS`` order (train rows first), so every MOSES molecule has one global row, which seeds its
conformers whatever subset it is built in.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from moldiff.data.paths import cache_dir

PACKAGE, VERSION = "molsets", "0.3.1"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
# PyPI's published digest of that wheel (51,584,291 bytes); anything else is refused
SHA256 = "7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34"
SPLITS = ("train", "test", "test_scaffolds")
MEMBER = "moses/dataset/data/{}.csv.gz"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_wheel(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """``path`` if its sha256 is the pinned one (``SHA256``); ValueError otherwise (a wrong or altered file)."""
    sha256 = sha256 or SHA256
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MOSES wheel {path}")
    got = sha256_of(path)
    if got != sha256:
        raise ValueError(f"{path}: sha256 {got} is not the pinned {sha256} of {WHEEL}; "
                         "delete it (or pass the right file) and build again")
    return path


class DownloadError(RuntimeError):
    """The wheel could not be fetched from the package index (network, index settings)."""


def _pip_download(dest: Path) -> None:
    """``pip download molsets==0.3.1 --no-deps`` into ``dest``, with pip's own hash check too."""
    req = dest / "requirements.txt"
    req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}\n")  # pip refuses any other file too
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise DownloadError(f"could not download {WHEEL} from the package index ({' '.join(cmd[2:])}):\n"
                           f"{(res.stderr or res.stdout).strip()[-2000:]}")


def fetch_wheel(folder: str | os.PathLike | None = None, sha256: str | None = None, download=None) -> Path:
    """The checked wheel in ``folder`` (default ``<data>/moses/cache``), downloaded once.

    The download goes to a temporary folder beside the target and is moved into place only after
    its checksum matched, so the folder never holds a partial or unverified wheel. A wheel already
    there is checked again; a wrong one is refused, not replaced, so nothing is deleted silently.
    """
    folder = Path(folder) if folder is not None else cache_dir("moses")
    download = download or _pip_download
    target = folder / WHEEL
    if target.is_file():
        return check_wheel(target, sha256)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".download_"))
    try:
        download(tmp)
        got = tmp / WHEEL
        if not got.is_file():
            raise DownloadError(f"the download left no {WHEEL} (found: {sorted(p.name for p in tmp.iterdir())})")
        check_wheel(got, sha256)
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def iter_split(wheel: str | os.PathLike, split: str):
    """The SMILES of one split, in file order, streamed from the (already checked) wheel; an empty
    or odd row gives ``""`` (the build counts it as unparsable), so row numbers never shift."""
    if split not in SPLITS:
        raise ValueError(f"unknown MOSES split {split!r}; use one of {SPLITS}")
    with zipfile.ZipFile(wheel) as z:
        try:
            member = z.open(MEMBER.format(split))
        except KeyError:
            raise ValueError(f"{wheel}: no {MEMBER.format(split)}; is this the molsets {VERSION} wheel?") from None
        with member, gzip.open(member, "rt", encoding="utf-8", newline="") as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if not header or header[0].strip() != "SMILES":
                raise ValueError(f"{wheel}: {MEMBER.format(split)} does not start with a SMILES column (header {header})")
            for row in reader:
                yield row[0].strip() if row else ""


def split_sizes(wheel: str | os.PathLike) -> dict[str, int]:
    return {s: sum(1 for _ in iter_split(wheel, s)) for s in SPLITS}


def default_counts(n_train: int, sizes: dict[str, int]) -> dict[str, int]:
    """``n_train`` train molecules and each test split in MOSES's own proportion to train
    (about one ninth each), so a subset keeps the splits' relative sizes."""
    if n_train < 1:
        raise ValueError(f"n must be >= 1, got {n_train}")
    n_train = min(n_train, sizes["train"])
    return {s: n_train if s == "train" else min(sizes[s], round(n_train * sizes[s] / sizes["train"])) for s in SPLITS}


def select_rows(wheel: str | os.PathLike, n_train: int | None, seed: int = 0) -> tuple[list[str], list[int], list[str], dict]:
    """A seeded subset of every split: (SMILES, global rows, split of each, selection summary).

    Each split's chosen rows are the first ``count`` of ``default_rng([seed, k]).permutation`` of
    its rows (``k`` the split's index), in file order; so a smaller ``n`` (same seed) picks a
    subset of a larger one's molecules. ``n_train=None`` takes every molecule.
    """
    sizes = split_sizes(wheel)
    counts = dict(sizes) if n_train is None else default_counts(n_train, sizes)
    smiles, rows, labels = [], [], []
    first = 0
    for k, s in enumerate(SPLITS):
        chosen = np.sort(np.random.default_rng([seed, k]).permutation(sizes[s])[: counts[s]])
        pos = 0
        for i, smi in enumerate(iter_split(wheel, s)):
            if pos < len(chosen) and chosen[pos] == i:
                smiles.append(smi)
                rows.append(first + i)
                labels.append(s)
                pos += 1
        first += sizes[s]
    return smiles, rows, labels, {"split_sizes": sizes, "counts": counts, "seed": seed}


def synthetic_wheel(path: str | os.PathLike, splits: dict[str, list[str]]) -> Path:
    """A tiny zip laid out like the wheel, for tests (its checksum is not the pinned one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for s, rows in splits.items():
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
                g.write(("SMILES\n" + "".join(r + "\n" for r in rows)).encode())
            z.writestr(MEMBER.format(s), buf.getvalue())
    return Path(path)
