"""Train a QM9 property guide or evaluator: ``python scripts/train_property.py property=alpha
role=guide`` (configs/train_property.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.cli import user_errors
from moldiff.jobs.resolvers import register_resolvers
from moldiff.jobs.train_property import run_property_training

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="train_property", version_base="1.3")
def main(cfg) -> None:
    with user_errors():  # a bad value or missing file: one line, exit status 2
        run_property_training(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
