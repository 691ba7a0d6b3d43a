"""Evaluate molecules: ``python scripts/evaluate.py input=samples.sdf`` (or ``input=qm9:test``)."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.cli import user_errors
from moldiff.jobs.evaluate import run_evaluation
from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg) -> None:
    with user_errors():
        run_evaluation(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
