"""Finished pieces of a long job, kept on disk until the job ends, so a rerun of an interrupted
command resumes instead of starting over. A run key (hash of everything that determines the
results) guards against mixing pieces of different runs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from moldiff.io.writers import atomic_write


def run_key(*fields) -> str:
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


class PartialResults:
    """``folder/batch_<k>.npz`` files (each written atomically) under ``folder/key``."""

    def __init__(self, folder: str | Path, key: str):
        self.folder = Path(folder)
        key_file = self.folder / "key"
        if not (key_file.is_file() and key_file.read_text() == key):
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            key_file.write_text(key)

    def path(self, k: int) -> Path:
        return self.folder / f"batch_{k:05d}.npz"

    def finished(self) -> list[int]:
        return sorted(int(f.stem.split("_")[1]) for f in self.folder.glob("batch_*.npz"))

    def save_arrays(self, k: int, **arrays) -> None:
        with atomic_write(self.path(k), "wb") as f:
            np.savez(f, **arrays)

    def load_arrays(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.path(k)) as z:
            return {name: z[name] for name in z.files}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
