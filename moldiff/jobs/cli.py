"""What the scripts share: a user's mistake ends the run with one line, not a traceback."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager

# Where a Hydra ``+key=value`` may add a key: the sampler options (an open dict) and Hydra's own
# settings. Anywhere else an added key is one no job reads: a typo that Hydra's hint
# ("use +stpes=10 to append") turned into a silent no-op.
OPEN_KEYS = ("options", "hydra")


@contextmanager
def user_errors():
    """A ValueError or FileNotFoundError from a job (a bad value, a missing or unusable input)
    becomes ``error: <message>`` on stderr and exit status 2; any other exception, a bug, keeps
    its traceback. Under Hydra, an unknown ``+key`` addition is refused here, before any work."""
    try:
        refuse_additions(*_hydra_overrides())
        yield
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def require_package(package: str, why: str) -> None:
    """An optional package a setting needs, checked before any work (not after sampling)."""
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{why} needs {package}, which is not installed: `pip install {package}` (or `pip install moldiff[extra]`)")


def refuse_additions(overrides: list[str], config: str = "the job's config") -> None:
    """Refuse ``+key=value`` overrides outside ``OPEN_KEYS`` (``++key``, Hydra's explicit
    add-or-override, is left alone)."""
    for override in overrides:
        if override.startswith("+") and not override.startswith("++"):
            key = override[1:].split("=", 1)[0]
            if key.split(".")[0].split("@")[0] not in OPEN_KEYS:
                raise ValueError(f"{key}: unknown key; '+{key}=...' would add a key no job reads, so it is refused like a typo "
                                 f"(the keys are in {config}; '+' adds only under {', '.join(OPEN_KEYS)})")


def _hydra_overrides() -> tuple[list[str], str]:
    """The command line's overrides and the config's file when running under Hydra, else none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], "the job's config"
    hydra = HydraConfig.get()
    return list(hydra.overrides.task), f"configs/{hydra.job.config_name}.yaml"
