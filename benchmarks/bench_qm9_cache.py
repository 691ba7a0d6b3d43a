"""QM9 cache: one-off build time and load time per split (target: whole set < 0.5 s).

python benchmarks/bench_qm9_cache.py
"""

import time

from moldiff.data.qm9 import build_cache, cache_paths, load_qm9


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


if __name__ == "__main__":
    if not cache_paths()["h"].exists():
        t = time.perf_counter()
        build_cache()
        print(f"build cache (parse qm9pack CSVs, both variants): {time.perf_counter() - t:.1f} s")
    for split in ("all", "train", "test"):
        for remove_h in (False, True):
            s = best_of(lambda: load_qm9(split, remove_h=remove_h))
            print(f"load {split:<5} remove_h={remove_h!s:<5} {1000 * s:7.1f} ms")
