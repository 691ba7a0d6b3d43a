"""Build a conformer dataset from SMILES: ``python scripts/build_conformers.py [SMILES_FILE | moses] [-k 5] [--xtb]``.

Without a file it builds the geom_1k demo set (the 1000 GEOM-Drugs test SMILES in
``datasets/geom_1k/``) into ``datasets/geom_1k/cache/geom_1k_k5.npz`` plus its train/val split,
which ``python scripts/train.py dataset=geom_1k`` reads. ``moses -n 100000`` builds 100,000 MOSES
train molecules and MOSES's test and scaffold-test splits in proportion, one conformer each, with
bonds and charges, from the molsets wheel (fetched once, checksum pinned; datasets/moses/README.md).
Rerun the same command after an interruption to finish the build. See
``moldiff.jobs.build_conformers`` (the build), ``moldiff.chem.conformers`` (one molecule's
conformers) and docs/data.md.
"""

import argparse
import sys
from pathlib import Path

from moldiff.chem.conformers import ConformerSettings
from moldiff.jobs.build_conformers import (build_conformer_dataset, build_moses_dataset, default_output, moses_output,
                                           report_path, summary_text)
from moldiff.data.moses import DownloadError
from moldiff.jobs.cli import user_errors

GEOM_1K = Path(__file__).resolve().parents[1] / "datasets" / "geom_1k" / "geom_drugs_test_1000_smiles.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build a conformer dataset (GEOM cache format) from a SMILES file.")
    ap.add_argument("smiles", nargs="?", type=Path, default=GEOM_1K,
                    help="a .csv with a 'smiles' column or one SMILES per line (default: the geom_1k set), or 'moses' "
                         "(the MOSES splits from the molsets wheel; a file named so: ./moses)")
    ap.add_argument("-n", type=int, help="moses: train molecules (test and scaffold test in MOSES's proportion, ~n/9 "
                                         "each); default all")
    ap.add_argument("--wheel", type=Path, help="moses: a local molsets-0.3.1 wheel instead of downloading it "
                                               "(its sha256 is checked either way)")
    ap.add_argument("--bonds", action="store_true", help="also store bonds and charges from the SMILES (always for moses)")
    ap.add_argument("--out", type=Path, help="output .npz (default: datasets/<name>/cache/<name>_k<k>[_xtb].npz)")
    ap.add_argument("--name", help="dataset name for the default output (default: geom_1k, or the file's stem)")
    ap.add_argument("-k", "--conformers", type=int, help="conformers per molecule (default: 5; 1 for moses)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes")
    ap.add_argument("--chunk", type=int, default=16, help="molecules per resumable shard")
    ap.add_argument("--mmff-iters", type=int, default=2000)
    ap.add_argument("--prune-rms", type=float, default=0.0, help="ETKDG RMSD pruning in Å (0: off)")
    ap.add_argument("--xtb", action="store_true", help="polish each conformer with GFN2-xTB (tblite); slow")
    ap.add_argument("--xtb-fmax", type=float, default=0.05, help="eV/Å")
    ap.add_argument("--xtb-steps", type=int, default=200)
    ap.add_argument("--val-fraction", type=float, default=0.1, help="molecules in the val cache (0: no split)")
    ap.add_argument("--split-seed", type=int, default=0, help="the val split's seed (moses: which molecules are drawn)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild even when up to date; discard an unfinished build of other settings")
    args = ap.parse_args(argv)
    is_moses = str(args.smiles) == "moses"  # the name, not a path: a file called so is ./moses
    k = args.conformers or (1 if is_moses else 5)
    settings = ConformerSettings(k, args.seed, args.mmff_iters, args.prune_rms, args.xtb, args.xtb_fmax, args.xtb_steps)
    name = args.name or ("geom_1k" if args.smiles.resolve() == GEOM_1K else args.smiles.stem)
    log = lambda m: print(m, flush=True)  # noqa: E731
    with user_errors():  # a bad value or missing file: one line, exit status 2
        try:
            if is_moses:
                if args.n is not None and args.n < 1:
                    raise ValueError(f"-n must be >= 1, got {args.n}")
                out = args.out or moses_output(args.n, settings)
                summary = build_moses_dataset(args.n, out, settings, args.workers, args.chunk, args.split_seed, args.overwrite,
                                              args.wheel, log)
            else:
                if args.n is not None or args.wheel is not None:
                    raise ValueError("-n and --wheel are for the moses source")
                out = args.out or default_output(name, settings)
                summary = build_conformer_dataset(args.smiles, out, settings, args.workers, args.chunk, args.val_fraction,
                                                  args.split_seed, args.overwrite, log, args.bonds)
        except (ImportError, DownloadError) as err:  # --xtb without tblite; no route to the package index
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    print(summary_text(summary))
    print(f"report: {report_path(out)}")


if __name__ == "__main__":
    main()
