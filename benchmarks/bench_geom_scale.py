"""GEOM-Drugs scale (issue 17): EGNN training memory and throughput on molecules of 30-181 atoms,
full graph against radius graph.

    python benchmarks/bench_geom_scale.py [--sizes 30,60,120,181] [--radius 5] [--configs 4x128,4x256]
        [--batch-atoms 1086] [--steps 10] [--warmup 3] [--threads 2] [--device cpu|cuda]
        [--precision 32|bf16-mixed|32,bf16-mixed] [--out FILE.json]

Proper measurement on CPU: an idle machine (nothing else running: other jobs change CPU timings up
to several-fold; the load average is printed and saved), the defaults (``--steps 10 --warmup 3``,
4 x 128 and 4 x 256, 1086 atoms per batch), optionally ``--precision 32,bf16-mixed``. A smoke test
beside other jobs: ``--configs 4x128 --batch-atoms 362 --steps 2 --warmup 1`` (its times are
noise, its memory is not). On a GPU (docs/performance.md, "GEOM scale"): ``--device cuda --configs
4x128,4x256 --precision 32,bf16-mixed --batch-atoms 4344 --steps 5 --warmup 2`` (about 90 s on an
H200). Results: a markdown table on stdout, JSON in ``--out``.

What one row is: a batch of ``batch_atoms // N`` molecules of N atoms each (1086 = 6 x 181 atoms:
36 x 30, 18 x 60, 9 x 120, 6 x 181), so every row has about the same atom count and the edge count
grows with N: the rows show what bounds memory. A training step as ``scripts/train.py`` runs it:
t ~ U(0, 1) per molecule, EDM's polynomial-2 schedule (the default ``noise``), positions noised in
the zero-CoM subspace, EGNN forward (edges built inside the call, from the noised positions, as in
training), squared error on both epsilons, backward, Adam step. Throughput over ``--steps`` timed
steps after ``--warmup``: atoms/s, molecules/s, and the mean edge count of the graph the network
used. Memory: CPU, the peak resident set of a fresh process per row (``ru_maxrss``) minus its size
before the first step, with ``tune_cpu_allocator`` as the training job sets it; CUDA, the
allocator's peak (``max_memory_allocated``) minus what was allocated before the first step. Both
are the step's activations, gradients and transients; the parameters and Adam state are tiny.

Molecules: synthetic, drug-like in shape (``drug_like``): heavy atoms as a randomly branched tree
with 1.5 A bonds and >= 2.5 A between non-bonded heavy atoms, 45 % hydrogens at 1.09 A (GEOM-Drugs
has 44.6 % H). Radii of gyration 4.3-5.5 A at 31-56 atoms, within the 3.2-5.9 A of the real GEOM
conformers of ``tests/data`` (printed as ``calibration``; about 10 % wider on average, so radius
graphs here keep slightly fewer edges than real ones would). Only the radius graph depends on the
shape; full-graph rows depend on N alone.

Also printed: the fraction of the full graph's edges that a radius graph keeps at noise levels
t = 0 ... 1 (positions in the network are the noised z_t = alpha_t x + sigma_t eps in angstrom:
at high noise every atom is within a few angstrom of every other, and the radius graph is the full
graph whatever r is).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moldiff.geometry import centered_noise, remove_mean
from moldiff.model import build
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.nn.egnn import EGNN
from moldiff.nn.graph import radius_graph

ROOT = Path(__file__).resolve().parents[1]
FEATURES = {"vocabulary": "geom", "include_charges": True}
NOISE = {"schedule": "polynomial", "power": 2.0, "precision": 1.0e-5}
# GEOM-Drugs atom counts (with H), from EDM's published histogram of its 30-lowest-energy-conformer
# set (6.92 M conformers; configs/datasets_config.py, geom_with_h, of EDM's repository): mean N,
# mean N (N - 1) (full-graph edges per molecule), percentiles and the largest.
GEOM_STATS = {"conformers": 6_922_516, "mean_atoms": 46.64, "mean_edges": 2236.8, "p50": 46, "p90": 60, "p99": 73,
              "p99.9": 111, "max": 181}


# --- molecules -------------------------------------------------------------------------------------
def _unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def drug_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(positions (n, 3) in angstrom, atomic numbers (n,)): a synthetic drug-like molecule."""
    rng = np.random.default_rng(seed)
    heavy = max(1, round(0.554 * n))
    pos = [np.zeros(3)]
    deg = [0]
    for _ in range(1, heavy):
        placed = False
        while not placed:
            # grow from any atom with a free valence: as compact as real drug-like conformers
            # (calibrated on their radii of gyration; growing chains came out 30 % too wide)
            free = [i for i in range(len(pos)) if deg[i] < 3]
            parent = free[rng.integers(len(free))]
            for _ in range(60):
                p = pos[parent] + 1.5 * _unit(rng)
                d = np.linalg.norm(np.asarray(pos) - p, axis=1)
                d[parent] = 9.0
                if d.min() >= 2.5:
                    pos.append(p), deg.append(0)
                    deg[parent] += 1
                    placed = True
                    break
            else:
                deg[parent] = 3  # crowded: no more branches here
    heavy_pos = np.asarray(pos)
    hs = []
    while len(hs) < n - heavy:
        i = rng.integers(heavy)
        if deg[i] >= 4:
            continue
        p = heavy_pos[i] + 1.09 * _unit(rng)
        others = np.concatenate([heavy_pos, np.asarray(hs).reshape(-1, 3)])
        d = np.linalg.norm(others - p, axis=1)
        d[i] = 9.0
        if d.min() >= 1.8:
            hs.append(p)
            deg[i] += 1
    x = np.concatenate([heavy_pos, np.asarray(hs).reshape(-1, 3)])
    z = np.concatenate([np.where(rng.random(heavy) < 0.8, 6, rng.choice([7, 8], heavy)), np.ones(n - heavy, dtype=np.int64)])
    return x - x.mean(0), z


def radius_of_gyration(x: np.ndarray) -> float:
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


def real_calibration() -> dict:
    """Radii of gyration of the real GEOM conformers in tests/data beside synthetic ones of the same sizes."""
    import gzip

    text = gzip.decompress((ROOT / "tests" / "data" / "geom_drugs_503_conformers.sdf.gz").read_bytes()).decode()
    real = {}
    for rec in text.split("$$$$\n")[:503:25]:
        lines = rec.splitlines()
        if len(lines) < 4:
            continue
        na = int(lines[3][:3])
        xyz = np.array([[float(v) for v in ln.split()[:3]] for ln in lines[4 : 4 + na]])
        real.setdefault(na, []).append(radius_of_gyration(xyz))
    return {int(k): {"real_rg": float(np.mean(v)), "synthetic_rg": float(np.mean([radius_of_gyration(drug_like(k, s)[0]) for s in range(3)]))}
            for k, v in sorted(real.items())}


def make_batch(n_atoms: int, n_mol: int, layout, seed: int = 0):
    xs, zs = zip(*(drug_like(n_atoms, seed * 1000 + m) for m in range(n_mol)))
    x = torch.from_numpy(np.concatenate(xs)).float()
    h = layout.encode_indices(torch.from_numpy(layout.vocab.encode(np.concatenate(zs)))).float()
    batch = torch.repeat_interleave(torch.arange(n_mol), n_atoms)
    return remove_mean(x, batch, n_mol), h, batch


# --- measurements --------------------------------------------------------------------------------------
def edge_fraction_by_t(sizes, r: float, ts=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0), reps: int = 4) -> dict:
    """Share of the full graph's N (N - 1) edges that a radius-r graph on z_t keeps, per size and t."""
    schedule = build.sde(NOISE).schedule
    out = {}
    for n in sizes:
        row = {}
        for t in ts:
            a, s = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma(torch.tensor(t)))
            kept = []
            for k in range(reps):
                x = torch.from_numpy(drug_like(n, 100 + k)[0])
                g = torch.Generator().manual_seed(k)
                z = a * x + s * centered_noise(torch.zeros(n, dtype=torch.long), 1, g, torch.float64)
                kept.append(len(radius_graph(z, r)[0]) / (n * (n - 1)))
            row[str(t)] = float(np.mean(kept))
        out[str(n)] = row
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_row(layers: int, hidden: int, n_atoms: int, graph: str, radius: float, batch_atoms: int,
              steps: int, warmup: int, device: str, precision: str = "32", seed: int = 0) -> dict:
    torch.manual_seed(seed)
    layout = build.feature_layout(FEATURES)
    kw = {"edges": "radius", "cutoff": radius} if graph == "radius" else {}
    model = EGNN(layout.dim, hidden=hidden, layers=layers, **kw).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sde = build.sde(NOISE)
    n_mol = max(1, batch_atoms // n_atoms)
    x, h, batch = (v.to(device) for v in make_batch(n_atoms, n_mol, layout, seed))
    gen = torch.Generator(device=device).manual_seed(seed)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def inputs():
        t = torch.rand(n_mol, generator=gen, device=device)
        ex = centered_noise(batch, n_mol, gen, x.dtype)
        eh = torch.randn(h.shape, generator=gen, device=device)
        a, s = sde.alpha(t, batch), sde.sigma(t, batch)
        return a * x + s * ex, a * h + s * eh, t, ex, eh

    def step(zx, zh, t, ex, eh):
        # bf16-mixed as Lightning's precision flag runs it: the network under autocast
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            px, ph = model(zx, zh, t, batch, n_mol)
        loss = (px - ex).square().sum(1).mean() + (ph - eh).square().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes()
    edges, dt = [], 0.0
    for k in range(warmup + steps):
        args = inputs()
        if k >= warmup:
            edges.append(len(model.build_edges(args[0], batch, n_mol)[0]))
        sync()
        t0 = time.perf_counter()
        loss = step(*args)
        sync()
        if k >= warmup:
            dt += time.perf_counter() - t0
    assert torch.isfinite(loss)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    mean_edges = float(np.mean(edges))
    return dict(layers=layers, hidden=hidden, n_atoms=n_atoms, graph=graph if graph == "full" else f"radius {radius:g} A",
                n_mol=n_mol, atoms=n_mol * n_atoms, full_edges=n_mol * n_atoms * (n_atoms - 1), mean_edges=mean_edges,
                step_s=dt / steps, atoms_per_s=steps * n_mol * n_atoms / dt, mol_per_s=steps * n_mol / dt,
                peak_mb=peak / 2**20, bytes_per_edge=peak / max(edges), device=device, precision=precision, steps=steps,
                load=os.getloadavg()[0])


def table(rows: list[dict]) -> str:
    lines = ["| EGNN | precision | N atoms | graph | molecules x N | edges per step (full) | step (s) | atoms/s | molecules/s | peak memory (MB) | bytes per edge |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layers']} x {r['hidden']} | {r['precision']} | {r['n_atoms']} | {r['graph']} | {r['n_mol']} x {r['n_atoms']} | "
                     f"{r['mean_edges']:,.0f} ({r['full_edges']:,}) | {r['step_s']:.2f} | {r['atoms_per_s']:,.0f} | "
                     f"{r['mol_per_s']:.1f} | {r['peak_mb']:,.0f} | {r['bytes_per_edge']:,.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="30,60,120,181")
    ap.add_argument("--radius", type=float, default=5.0)
    ap.add_argument("--configs", default="4x128,4x256")
    ap.add_argument("--batch-atoms", type=int, default=1086)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32", help="32 or bf16-mixed; a comma list runs each")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_geom_scale.json"))
    ap.add_argument("--row", help=argparse.SUPPRESS)  # child mode: one row as JSON "layers,hidden,N,graph,precision"
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        tune_cpu_allocator()  # as the training job does on CPU
    if args.row:
        layers, hidden, n, graph, precision = args.row.split(",")
        row = bench_row(int(layers), int(hidden), int(n), graph, args.radius, args.batch_atoms, args.steps, args.warmup, args.device, precision)
        print(json.dumps(row))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    load0 = os.getloadavg()[0]
    rows = []
    for (layers, hidden), precision in [(c, p) for c in configs for p in args.precision.split(",")]:
        for n in sizes:
            for graph in ("full", "radius"):
                if args.device == "cpu":  # a fresh process per row: ru_maxrss is a lifetime peak
                    cmd = [sys.executable, __file__, *sys.argv[1:], "--row", f"{layers},{hidden},{n},{graph},{precision}"]
                    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
                    row = json.loads(out.strip().splitlines()[-1])
                else:
                    try:
                        row = bench_row(layers, hidden, n, graph, args.radius, args.batch_atoms, args.steps, args.warmup, args.device, precision)
                    except torch.cuda.OutOfMemoryError:  # a row too big for the card: say so, go on
                        print(f"{layers}x{hidden} {precision} N={n} {graph}: out of memory", file=sys.stderr, flush=True)
                        torch.cuda.empty_cache()
                        continue
                print(f"{layers}x{hidden} {precision} N={n} {row['graph']}: {row['step_s']:.2f} s/step, {row['atoms_per_s']:,.0f} atoms/s, "
                      f"{row['mean_edges']:,.0f} edges, peak {row['peak_mb']:,.0f} MB, load {row['load']:.2f}", file=sys.stderr, flush=True)
                rows.append(row)
    fractions = edge_fraction_by_t(sizes, args.radius)
    calibration = real_calibration()
    print(table(rows))
    print(f"\nradius {args.radius:g} A graph on z_t: share of the full graph's edges kept")
    ts = list(next(iter(fractions.values())))
    print("| N | " + " | ".join(f"t = {t}" for t in ts) + " |\n|---|" + "---|" * len(ts))
    for n, row in fractions.items():
        print(f"| {n} | " + " | ".join(f"{row[t]:.2f}" for t in ts) + " |")
    print("\ncalibration, radius of gyration (A), real GEOM conformers vs synthetic:",
          {k: (round(v["real_rg"], 2), round(v["synthetic_rg"], 2)) for k, v in calibration.items()})
    result = {"args": vars(args), "load_before": load0, "load_after": os.getloadavg()[0], "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "rows": rows, "radius_edge_fraction_by_t": fractions, "calibration_rg": calibration, "geom_drugs": GEOM_STATS}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
