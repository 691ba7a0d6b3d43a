"""Build a GEOM-Drugs ``MoleculeSet`` cache: ``python scripts/build_geom_cache.py SOURCE [OUT] [-k 30]``.

SOURCE is an extracted ``rdkit_folder`` (or its summary JSON) or ``drugs_crude.msgpack``; see
``moldiff.data.geom`` and ``datasets/geom_drugs/README.md``.
"""

import argparse

from moldiff.data.geom import EDM_CONFORMERS_PER_MOLECULE, build_geom_cache
from moldiff.jobs.cli import user_errors


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build a GEOM-Drugs MoleculeSet cache.")
    ap.add_argument("source", help="extracted rdkit_folder (or its summary JSON) or drugs_crude.msgpack")
    ap.add_argument("out", nargs="?", help="output .npz (default: datasets/geom_drugs/cache/geom_drugs_k<k>.npz)")
    ap.add_argument("--format", default="auto", choices=["auto", "rdkit_folder", "msgpack"])
    ap.add_argument("-k", "--conformers", type=int, default=EDM_CONFORMERS_PER_MOLECULE, help="0 keeps all")
    ap.add_argument("--max-molecules", type=int, default=None)
    args = ap.parse_args(argv)
    with user_errors():  # a missing or unreadable source: one line, exit status 2
        path, rep = build_geom_cache(args.source, args.out, args.format, args.conformers or None, max_molecules=args.max_molecules)
    print(f"{path}: {rep.summary()}")
    for line in rep.examples:
        print("  " + line)


if __name__ == "__main__":
    main()
