"""Sample molecules: ``python scripts/sample.py n=1000`` (configs/sample.yaml; the shipped QM9
model by default)."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.sample import run_sampling
from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="sample", version_base="1.3")
def main(cfg) -> None:
    run_sampling(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
