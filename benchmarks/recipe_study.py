"""The equal-budget recipe study (issue 13; outcome in docs/history.md, knobs in docs/training.md).

Every variant continues the campaign's committed resume state (``campaign_resume.ckpt``: weights,
EMA, AdamW moments, loader position) for the same number of steps, so all of them see the same
batches and the same noise and differ only in the recipe. Each is then scored two ways: the one-step
denoising probe (500 QM9 test molecules, ``denoise_probe.py``) and 1000 sampled molecules per seed
under both protocols, ancestral sampling at 100 and 300 network evaluations.

    python benchmarks/recipe_study.py train b            # continue the start with variant b's recipe
    python benchmarks/recipe_study.py evaluate b --nfe 100,300 --seeds 0,1
    python benchmarks/recipe_study.py table              # the markdown table of recipe_study.json

Results go into ``benchmarks/recipe_study.json`` one (variant, evaluation) at a time, and an
evaluation already there is not repeated, so an interrupted study loses nothing finished. Variant e
(EMA 0.9999) needs no run of its own: EMA does not change training, so it is kept beside a's
(``shadow_ema``) and exported from a's checkpoint. Train variants with the campaign stopped or
side by side; the time per step each run measured is recorded with what ran beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START = HERE / "campaign_resume.ckpt"
STEPS = 4686  # 3 QM9 epochs of 64-molecule batches (1562 per epoch)
DATA = HERE / "recipe_study.json"

# name -> (what it is, the run it comes from, its Hydra overrides, the EMA decay exported)
VARIANTS = {
    "a": ("baseline L_simple, constant lr, EMA 0.999", "study_a", ["shadow_ema=[0.9999]"], None),
    "b": ("x0-error weighting clip(SNR, 0.05, 1.5)", "study_b", ["loss.weighting=snr_clip", "loss.snr_clip=[0.05,1.5]"], None),
    "c": ("half of each batch at t <= 0.05", "study_c", ["loss.low_t.fraction=0.5", "loss.low_t.t_max=0.05"], None),
    "d": ("cosine lr decay to 0.1x over the leg", "study_d", ["optim.decay.kind=cosine", f"optim.decay.steps={STEPS}", "optim.decay.final=0.1"], None),
    "e": ("EMA 0.9999 (a's run)", "study_a", None, 0.9999),
}


def run_dir(variant: str) -> Path:
    return ROOT / "outputs" / "train" / VARIANTS[variant][1]


def end_step() -> int:
    return int(torch.load(START, map_location="cpu", weights_only=True)["global_step"]) + STEPS


def train(variant: str, extra: list[str]) -> None:
    """Continue the start with the variant's recipe up to the study's end step (rerun to resume)."""
    overrides = VARIANTS[variant][2]
    if overrides is None:
        sys.exit(f"variant {variant} rides on another run's training: train {VARIANTS[variant][1].split('_')[-1]}")
    last = run_dir(variant) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        last.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(START, last)  # the shared start: the run resumes from it, optimizer and loader included
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=qm9_cpu", f"name={VARIANTS[variant][1]}",
           "trainer.precision=bf16-mixed", f"trainer.max_steps={end_step()}", "trainer.max_time=null",
           "trainer.enable_progress_bar=false", "evaluate.every_n_epochs=0", *overrides, *extra]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})


def export(variant: str) -> Path:
    from moldiff.train.export import export_checkpoint

    last = run_dir(variant) / "checkpoints" / "last.ckpt"
    step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    if step != end_step():
        sys.exit(f"variant {variant}: {last} is at step {step}, not the study's end step {end_step()}; train it first")
    out = ROOT / "outputs" / "study" / f"{variant}_step_{step}.ckpt"
    out.parent.mkdir(parents=True, exist_ok=True)
    export_checkpoint(last, out, shadow_ema=VARIANTS[variant][3])
    return out


def leg_timing(path: Path) -> dict:
    """The study leg's own record: steps, seconds, seconds per step (with whatever ran beside it)."""
    leg = torch.load(path, map_location="cpu", weights_only=True)["moldiff_record"][-1]
    steps = leg["last_step"] - leg["first_step"]
    return {"steps": steps, "seconds": leg["seconds"], "seconds_per_step": round(leg["seconds"] / max(steps, 1), 3)}


def load() -> dict:
    return json.loads(DATA.read_text()) if DATA.is_file() else {"start": str(START.name), "steps": STEPS, "variants": {}}


def save(data: dict) -> None:
    from moldiff.io.writers import atomic_write

    with atomic_write(DATA, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")


def evaluate(variant: str, nfes: list[int], seeds: list[int], n: int, probe_n: int) -> None:
    from denoise_probe import probe, test_batch
    from sampler_quality import quality

    from moldiff.model.diffusion import DiffusionModel
    from moldiff.nn.cpu_tuning import tune_cpu_allocator

    tune_cpu_allocator()
    path = export(variant)
    model = DiffusionModel.load(path, torch.device("cpu"))
    data = load()
    entry = data["variants"].setdefault(variant, {})
    entry.update(what=VARIANTS[variant][0], overrides=VARIANTS[variant][2], training=leg_timing(path))
    if "probe" not in entry:
        batch, numbers = test_batch(model.layout, probe_n, 0)
        entry["probe"] = {"n": probe_n, "rows": probe(model, batch, numbers, [0.02, 0.05, 0.1, 0.2])}
        save(data)
    reused = campaign_rows(path, n)
    for nfe in nfes:
        for seed in seeds:
            key = f"ancestral:{nfe}:seed{seed}"
            if key in entry.get("sampling", {}):
                continue
            if (nfe, seed) in reused:  # the campaign's own evaluation of this very checkpoint
                entry.setdefault("sampling", {})[key] = reused[(nfe, seed)]
                save(data)
                continue
            row = quality(model, "ancestral", nfe, n, seed)
            entry.setdefault("sampling", {})[key] = {"n": n, **row}
            save(data)
            print(f"{variant} {key}: EDM mol. stab. {100 * row['edm']['molecule_stability']:.1f} %, valid {100 * row['edm']['validity']:.1f} %", flush=True)


def campaign_rows(path: Path, n: int) -> dict:
    """Rows ``campaign_leg.py`` already sampled from these very weights (ancestral 300, same seeds
    and n: sampling is seeded, so they are the rows this study would draw), keyed (nfe, seed).
    An entry counts only if its export is on this machine and holds identical EMA weights."""
    ours = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    log = json.loads((HERE / "campaign.json").read_text())
    rows = {}
    for e in log["entries"]:
        export = ROOT / e.get("export", "")
        words = e.get("command", "").split()
        if "--n" not in words or words[words.index("--n") + 1] != str(n) or not e.get("export") or not export.is_file():
            continue
        theirs = torch.load(export, map_location="cpu", weights_only=True)["state_dict"]
        if theirs.keys() != ours.keys() or not all(torch.equal(theirs[k], ours[k]) for k in ours):
            continue
        seeds = [int(s) for s in e["command"].split("--seeds ")[1].split()[0].split(",")]
        for i, seed in enumerate(seeds):
            rows[(300, seed)] = {"n": n, "sampler": "ancestral", "steps": 300, "seed": seed, "nfe": 300, "seconds": e["sampling_seconds"][i],
                                 "edm": {k: v[i] for k, v in e["edm"].items()}, "corrected": {k: v[i] for k, v in e["corrected"].items()},
                                 "from": "benchmarks/campaign.json"}
    return rows


def table() -> str:
    data = load()
    lines = ["| variant | s/step (beside) | probe mol. stab. % t = 0.05 / 0.1 / 0.2 | probe x0 RMSE t = 0.1 / 0.2 (Å) "
             "| NFE | EDM atom / mol. stab. / valid % | corrected mol. stab. / valid % |", "|---|---|---|---|---|---|---|"]
    for name, e in sorted(data["variants"].items()):
        probe = {r["t"]: r for r in e.get("probe", {}).get("rows", [])}
        p = " / ".join(f"{100 * probe[t]['molecule_stability']:.1f}" for t in (0.05, 0.1, 0.2) if t in probe)
        rmse = " / ".join(f"{probe[t]['rmse']:.3f}" for t in (0.1, 0.2) if t in probe)
        by_nfe: dict[int, list] = {}
        for row in e.get("sampling", {}).values():
            by_nfe.setdefault(row["nfe"], []).append(row)
        for i, (nfe, rows) in enumerate(sorted(by_nfe.items()) or [(None, [])]):
            def pm(proto, k):
                v = [100 * r[proto][k] for r in rows]
                return f"{sum(v) / len(v):.1f} ± {(max(v) - min(v)) / 2:.1f}" if v else "–"
            head = f"| {name}. {e['what']} | {e['training']['seconds_per_step']} | {p} | {rmse} " if i == 0 else "| | | | "
            lines.append(head + f"| {nfe or '–'} ({len(rows)} seeds) | {pm('edm', 'atom_stability')} / {pm('edm', 'molecule_stability')} / "
                         f"{pm('edm', 'validity')} | {pm('corrected', 'molecule_stability')} / {pm('corrected', 'validity')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["train", "evaluate", "table"])
    ap.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    ap.add_argument("--nfe", default="100,300")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--probe-n", type=int, default=500)
    a, extra = ap.parse_known_args()
    if a.action != "table" and a.variant is None:
        ap.error(f"{a.action} needs a variant: one of {', '.join(sorted(VARIANTS))}")
    if a.action == "train":
        train(a.variant, extra)
    elif a.action == "evaluate":
        evaluate(a.variant, [int(v) for v in a.nfe.split(",")], [int(v) for v in a.seeds.split(",")], a.n, a.probe_n)
    else:
        print(table())


if __name__ == "__main__":
    main()
