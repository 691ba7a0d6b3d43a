"""The config resolvers the scripts' Hydra configs use (registered by each script before Hydra
composes its config).

``${run_dir:${output},<default>}``: Hydra's run folder is the job's ``output`` folder when one is
given, so ``output=`` writes only there (no empty ``outputs/<job>/<time>/`` beside it); otherwise
the default. ``${file_run_dir:...}``: the same for an ``output`` that names a file (its folder).
``${config_subdir:${output}}``: Hydra's config snapshot (``.hydra/``) only in moldiff's own run
folders, never beside a file the user named.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

RESOLVERS = {
    "run_dir": lambda output, default: default if output is None else str(output),
    "file_run_dir": lambda output, default: default if output is None else str(Path(str(output)).parent),
    "config_subdir": lambda output: ".hydra" if output is None else None,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
