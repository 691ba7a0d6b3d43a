"""Run by tests/test_train.py under DDP (two gloo processes; Lightning starts this script once per
rank): rank 1 alone gets a non-finite loss at its third batch. Both ranks must skip that update
together and finish; the skip counts are written per rank."""

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from moldiff.train import module as train_module
from moldiff.jobs.train import run_training

out = Path(sys.argv[1])
real_step = train_module.DiffusionModule.training_step


def poisoned_step(self, batch, batch_idx):
    if self.global_rank == 1 and batch_idx == 2:
        batch.x = batch.x * float("nan")
    return real_step(self, batch, batch_idx)


train_module.DiffusionModule.training_step = poisoned_step
with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
    cfg = compose("train", ["experiment=tiny", "trainer=ddp_cpu", "trainer.max_steps=4", "trainer.enable_progress_bar=false",
                            "logs=[]", f"checkpoint.dir={out}/ckpt"])
module = run_training(cfg, out)
rank = module.global_rank
(out / f"skipped_rank{rank}.txt").write_text(str(module.skipped_batches))
torch.save({k: v for k, v in module.state_dict().items()}, out / f"weights_rank{rank}.pt")
