"""An .npz written chunk by chunk, so that no array is ever whole in memory.

``NpzStreamWriter`` appends rows of named arrays to raw files in a temporary folder beside the
output, then packs them into one uncompressed .npz (``np.load`` reads it like ``np.savez``'s),
copying through a memory map. The output appears atomically: complete or not at all.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from moldiff.files import atomic_write

__all__ = ["NpzStreamWriter"]


class NpzStreamWriter:
    """Appends arrays chunk by chunk to raw files, then packs them into one .npz atomically.

    ``dtypes`` names the arrays (and their order in the archive); ``widths`` gives the column
    count of the 2-D ones (e.g. ``{"positions": 3}``), the others are 1-D. ``finish`` writes the
    .npz and cleans up; ``close`` only cleans up (after a failure).
    """

    def __init__(self, out: Path, dtypes: dict[str, np.dtype], widths: dict[str, int]):
        self.out, self.dtypes, self.widths = out, dtypes, widths
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=".npz_build_"))
        self.rows = {k: 0 for k in dtypes}
        # open until finish() / close(): appends arrive over the whole build
        self.files = {k: open(self.tmpdir / f"{i}.raw", "wb") for i, k in enumerate(dtypes)}  # noqa: SIM115

    def append(self, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtypes[name])
        self.files[name].write(arr.tobytes())
        self.rows[name] += len(arr)

    def finish(self) -> None:
        for f in self.files.values():
            f.close()
        try:
            with atomic_write(self.out, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, f in self.files.items():
                    shape = (self.rows[name],) + ((self.widths[name],) if self.widths.get(name) else ())
                    if self.rows[name]:
                        arr = np.memmap(f.name, dtype=self.dtypes[name], mode="r", shape=shape)
                    else:
                        arr = np.zeros(shape, self.dtypes[name])  # an empty file cannot be mapped
                    with zf.open(name + ".npy", "w", force_zip64=True) as dst:
                        np.lib.format.write_array(dst, arr, allow_pickle=False)
                    del arr
        finally:
            self.close()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
