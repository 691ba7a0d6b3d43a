"""Energy-guided design: ``python scripts/guide.py property=alpha target=80 n=100``
(configs/guide.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.cli import user_errors
from moldiff.jobs.guide import run_guidance
from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="guide", version_base="1.3")
def main(cfg) -> None:
    with user_errors():  # a bad value or missing file: one line, exit status 2
        run_guidance(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
