"""The training pipeline against the bare network, in one run: how much the loader, Lightning,
logging, clipping, the optimizer and EMA cost on top of the forward and backward pass.

python benchmarks/bench_training.py [--steps 100] [--warmup 15] [--precisions 32,bf16-mixed]
                                    [--overrides model=egnn_large ...]

For each precision, on the same real QM9 batches of ``experiment=qm9_cpu`` (batch 64):

* **network**: noise, forward, loss, backward (``DiffusionLoss`` on the model's EGNN), nothing else;
* **+ update**: the same plus gradient clipping, the AdamW step and the EMA update;
* **pipeline**: ``train.py``'s own ``fit`` (Lightning, the resumable loader, logging, periodic
  checkpoints), timed by a callback from the end of the warm-up to the last step.

The batches are first run once untimed (the process heap grows to its peak, which would otherwise
count against whichever variant ran first). Molecules per second over the timed steps; the pipeline's share of the network's speed is the
figure to keep above 90 %. Run it on an idle machine (pause other jobs with ``kill -STOP``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from moldiff.model import build
from moldiff.train.module import TrainingRecord
from moldiff.jobs.train import build_module, fit, load_split, make_loaders, prepare

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.molecules = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.molecules += batch.n_mol
            self.t1 = time.perf_counter()


def bare(module, batches, amp: bool, update: bool, warmup: int) -> float:
    opt = module.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    molecules, t0 = 0, None
    for k, batch in enumerate(batches):
        if k == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            values, _ = module.objective(module.net, batch.x, batch.h, batch.batch, batch.n_mol, gen)
            loss = values.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)
            opt.step()
            module.ema.update_parameters(module.net)
        if t0 is not None:
            molecules += batch.n_mol
    return molecules / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--precisions", default="32,bf16-mixed")
    ap.add_argument("--overrides", nargs="*", default=[])
    a = ap.parse_args()
    rows = []
    for precision in a.precisions.split(","):
        with initialize_config_dir(str(CONFIGS), version_base="1.3"):
            cfg = compose("train", ["experiment=qm9_cpu", f"trainer.precision={precision}", "trainer.enable_progress_bar=false",
                                    f"trainer.max_steps={a.steps}", "trainer.max_time=null", "evaluate.every_n_epochs=0", *a.overrides])
        prepare(cfg)
        layout = build.feature_layout(build.plain(cfg.dataset.features))
        train = load_split(cfg.dataset.train, layout, None, int(cfg.seed))
        loader, _ = make_loaders(cfg, train, None)
        batches = [b for b, _ in zip(loader, range(a.steps))]
        amp = precision == "bf16-mixed"
        bare(build_module(cfg, train), batches, amp, True, a.warmup)  # untimed: the heap grows to its peak once
        speeds = {"network": bare(build_module(cfg, train), batches, amp, False, a.warmup),
                  "+ update": bare(build_module(cfg, train), batches, amp, True, a.warmup)}
        timer = StepTimer(a.warmup)
        with tempfile.TemporaryDirectory() as tmp:
            fit(cfg, build_module(cfg, train), *make_loaders(cfg, train, None), Path(tmp), Path(tmp) / "ckpt", TrainingRecord(), [timer])
        speeds["pipeline"] = timer.molecules / (timer.t1 - timer.t0)
        rows.append((precision, speeds))
        print(precision, {k: round(v, 1) for k, v in speeds.items()}, flush=True)
    model = f"{cfg.model.layers}x{cfg.model.hidden}"
    print(f"\nEGNN {model}, batch {cfg.batch_size}, {torch.get_num_threads()} threads, {a.steps - a.warmup} timed steps, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| precision | network fwd+bwd (mol/s) | + clip, AdamW, EMA | train.py pipeline | pipeline / network |\n|---|---|---|---|---|")
    for precision, s in rows:
        print(f"| {precision} | {s['network']:.0f} | {s['+ update']:.0f} | {s['pipeline']:.0f} | {100 * s['pipeline'] / s['network']:.0f} % |")


if __name__ == "__main__":
    main()
