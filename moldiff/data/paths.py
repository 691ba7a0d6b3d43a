"""Where datasets and their caches live.

In a source checkout: ``<repo>/datasets/<name>/cache``. Installed elsewhere: ``$MOLDIFF_DATA_DIR``
or ``~/.cache/moldiff``. ``MOLDIFF_DATA_DIR`` always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_DATASETS = Path(__file__).resolve().parents[2] / "datasets"


def data_root() -> Path:
    env = os.environ.get("MOLDIFF_DATA_DIR")
    if env:
        return Path(env)
    if _REPO_DATASETS.is_dir():
        return _REPO_DATASETS
    return Path.home() / ".cache" / "moldiff"


def cache_dir(name: str) -> Path:
    return data_root() / name / "cache"
