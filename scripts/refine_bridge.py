"""Refine a trained diffusion as a Schrödinger bridge: ``python scripts/refine_bridge.py ckpt=shipped
iterations=2 steps=50 horizon=0.8`` (configs/refine_bridge.yaml). Writes refined.ckpt, which
sample.py, likelihood.py and guide.py take as ``ckpt=``."""

import hydra
from hydra.core.hydra_config import HydraConfig

from moldiff.jobs.cli import user_errors
from moldiff.jobs.refine_bridge import run_refinement
from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # before Hydra composes the config


@hydra.main(config_path="../configs", config_name="refine_bridge", version_base="1.3")
def main(cfg) -> None:
    with user_errors():  # a bad value or missing file: one line, exit status 2
        run_refinement(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
