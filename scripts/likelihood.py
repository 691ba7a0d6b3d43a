"""Negative log-likelihoods of molecules: ``python scripts/likelihood.py split=test n=1000
method=elbo|ode`` (configs/likelihood.yaml; the shipped QM9 model by default)."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.cli import user_errors
from moldiff.jobs.likelihood import run_likelihood
from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="likelihood", version_base="1.3")
def main(cfg) -> None:
    with user_errors():  # a bad value or missing file: one line, exit status 2
        run_likelihood(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
