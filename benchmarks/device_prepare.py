"""Pack what a lent GPU machine lacks into one folder that travels with the working tree.

python benchmarks/device_prepare.py [--out .dev]

The device machines have torch, Lightning, PyG and e3nn but not Hydra (nor RDKit, ASE or qm9pack,
which training does not import), and they reach no network. This copies the pure-Python packages
Hydra needs from this environment (hydra, omegaconf, antlr4), writes the QM9 molecules the
property models train and validate on (first half of train, valid, test) as a compressed cache,
and copies the geom_1k caches if they are built. ``benchmarks/device_leg.sh`` runs with
``PYTHONPATH=.:.dev/pkgs MOLDIFF_DATA_DIR=.dev/datasets``. The folder must be ignored by git and
named in the device call's ``carry``; the working tree and it must stay under 64 MiB together.
"""

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np

from moldiff.data.paths import cache_dir
from moldiff.data.qm9 import SPLIT_CODES, load_qm9

PACKAGES = ("hydra", "omegaconf", "antlr4")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".dev")
    a = p.parse_args()
    out = Path(a.out)
    for name in PACKAGES:
        src = Path(__import__(name).__file__).parent
        shutil.rmtree(out / "pkgs" / name, ignore_errors=True)
        shutil.copytree(src, out / "pkgs" / name, ignore=shutil.ignore_patterns("__pycache__"))
    mols = load_qm9("all")
    props = mols.properties
    keep = (props["half"] == 1) | (props["split"] == SPLIT_CODES["valid"]) | (props["split"] == SPLIT_CODES["test"])
    sub = mols.subset(keep)
    arrays = {"numbers": sub.numbers, "positions": sub.positions, "offsets": sub.offsets}
    arrays.update({f"prop.{k}": v for k, v in sub.properties.items()})
    qm9 = out / "datasets" / "qm9" / "cache"
    qm9.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(qm9 / "qm9_h_v1.npz", **arrays)  # np.load reads it like the uncompressed cache
    geom = cache_dir("geom_1k")
    for f in sorted(geom.glob("geom_1k_k5_*.npz*")) if geom.is_dir() else []:
        (out / "datasets" / "geom_1k" / "cache").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out / "datasets" / "geom_1k" / "cache" / f.name)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    tree = sum(Path(f.decode()).stat().st_size for f in tracked if f and Path(f.decode()).is_file())
    print(f"{out}: {size / 2**20:.1f} MiB ({len(sub)} QM9 molecules); with the tracked tree {(size + tree) / 2**20:.1f} MiB of 64")


if __name__ == "__main__":
    main()
