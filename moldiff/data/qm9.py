"""QM9 offline from the PyPI package ``qm9pack``, with EDM's (Cormorant's) exact split.

``qm9pack`` ships the 130,831 characterised GDB-9 molecules (the 3,054 "uncharacterized" ones of
the original release already left out), B3LYP coordinates, SMILES and properties, as CSV. The
first call parses them once (~10 s) into flat ``.npz`` caches, with and without hydrogens; later
loads take well under 0.5 s (``benchmarks/bench_qm9_cache.py``).

Split (Cormorant ``gen_splits_gdb9``, used by EDM): molecules ordered by GDB index,
``np.random.seed(0); perm = np.random.permutation(130831)``; train = perm[:100000],
valid = perm[100000:117748], test = perm[117748:]. Each split is kept in GDB-index order,
as Cormorant's tar filter keeps it. The conditional-design halves (EDM's ``qm9_first_half`` /
``qm9_second_half``): the train split shuffled with ``np.random.seed(42)`` and cut in two.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from moldiff.data.elements import ATOMIC_NUMBER, QM9_VOCAB
from moldiff.data.molecules import MoleculeSet
from moldiff.data.paths import cache_dir
from moldiff.files import atomic_write

N_MOLECULES = 130_831
N_TRAIN, N_VALID, N_TEST = 100_000, 17_748, 13_083
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
CACHE_VERSION = 1

HARTREE_TO_EV = 27.2114  # Cormorant's / EDM's factor (``qm9_to_eV``)
# name: (qm9pack column, factor to EDM's unit). EDM units: mu D, alpha Bohr^3, homo/lumo/gap eV,
# Cv cal/(mol K); r2 Bohr^2, zpve meV, U0/U/H/G eV.
PROPERTY_COLUMNS = {
    "mu": ("Dipole_debye", 1.0),
    "alpha": ("Polarizability_bohr3", 1.0),
    "homo": ("HOMO_au", HARTREE_TO_EV),
    "lumo": ("LUMO_au", HARTREE_TO_EV),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
    "r2": ("R2_bohr2", 1.0),
    "zpve": ("ZPVE_au", HARTREE_TO_EV * 1000.0),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV),
}
# the unit of each property as PROPERTY_COLUMNS gives it (EDM's), for printed figures
PROPERTY_UNITS = {"mu": "D", "alpha": "Bohr³", "homo": "eV", "lumo": "eV", "gap": "eV", "Cv": "cal/(mol K)", "r2": "Bohr²",
                  "zpve": "meV", "U0": "eV", "U": "eV", "H": "eV", "G": "eV"}
# the six properties EDM conditions on and EEGSDE guides towards
QM9_TARGETS = ("alpha", "gap", "homo", "lumo", "mu", "Cv")


def edm_split_codes(n: int = N_MOLECULES) -> np.ndarray:
    """(n,) split code per molecule in GDB order: 0 train, 1 valid, 2 test (Cormorant's permutation)."""
    if n != N_MOLECULES:
        raise ValueError(f"EDM's split is defined for {N_MOLECULES} molecules, got {n}")
    rng_state = np.random.get_state()
    try:
        np.random.seed(0)
        perm = np.random.permutation(n)
    finally:
        np.random.set_state(rng_state)  # don't disturb the caller's global RNG
    codes = np.empty(n, np.int8)
    codes[perm[:N_TRAIN]] = 0
    codes[perm[N_TRAIN : N_TRAIN + N_VALID]] = 1
    codes[perm[N_TRAIN + N_VALID :]] = 2
    return codes


def edm_half_codes(split_codes: np.ndarray) -> np.ndarray:
    """(n,) 1 = first half of train (property predictors), 2 = second half (generator), 0 = not train."""
    train = np.flatnonzero(split_codes == 0)  # GDB order, as EDM loads the train split
    rng_state = np.random.get_state()
    try:
        np.random.seed(42)
        perm = np.random.permutation(len(train))
    finally:
        np.random.set_state(rng_state)
    half = np.zeros(len(split_codes), np.int8)
    half[train[perm[: len(train) // 2]]] = 1
    half[train[perm[len(train) // 2 :]]] = 2
    return half


def _qm9pack_csvs() -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qm9pack imports the deprecated pkg_resources
        import qm9pack.qm9pack_getdata as getdata
    folder = Path(getdata.__file__).parent / "data"
    return [folder / f"qm9_part{i}.csv" for i in (1, 2, 3)]


def parse_qm9pack() -> tuple[MoleculeSet, np.ndarray]:
    """All molecules from qm9pack's CSVs in GDB order, and their GDB SMILES."""
    import pandas as pd

    cols = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"] + [c for c, _ in PROPERTY_COLUMNS.values()]
    df = pd.concat([pd.read_csv(p, usecols=cols) for p in _qm9pack_csvs()], ignore_index=True)
    df = df.sort_values("Index", kind="stable").reset_index(drop=True)
    if len(df) != N_MOLECULES:
        raise RuntimeError(f"qm9pack holds {len(df)} molecules, expected {N_MOLECULES}")
    # One string per column, parsed in one call: ~50x faster than parsing row by row.
    strip = str.maketrans("", "", "[]'\" ")
    xyz = np.array(",".join(df["XYZ_Ang"]).translate(strip).split(","), dtype=np.float64)
    symbols = ",".join(df["Elements"]).translate(strip).split(",")
    numbers = np.array([ATOMIC_NUMBER[s] for s in symbols], dtype=np.int16)
    counts = df["N_atoms"].to_numpy(np.int64)
    if xyz.size != 3 * counts.sum() or numbers.size != counts.sum():
        raise RuntimeError("qm9pack: atom counts disagree with coordinates/elements")
    props = {name: df[col].to_numpy(np.float64) * f for name, (col, f) in PROPERTY_COLUMNS.items()}
    props["index"] = df["Index"].to_numpy(np.int64)
    split = edm_split_codes(len(df))
    props["split"] = split
    props["half"] = edm_half_codes(split)
    # float32 positions, as Cormorant's torch.tensor(...) stored them for EDM.
    mols = MoleculeSet(numbers, xyz.reshape(-1, 3).astype(np.float32), np.concatenate([[0], np.cumsum(counts)]), props)
    return mols, df["SMILES"].to_numpy(str)


def cache_paths(root: Path | None = None) -> dict[str, Path]:
    root = Path(root) if root is not None else cache_dir("qm9")
    return {
        "h": root / f"qm9_h_v{CACHE_VERSION}.npz",
        "noh": root / f"qm9_noh_v{CACHE_VERSION}.npz",
        "smiles": root / f"qm9_gdb_smiles_v{CACHE_VERSION}.txt",
    }


def build_cache(root: Path | None = None) -> dict[str, Path]:
    """Parse qm9pack once and write both caches atomically."""
    paths = cache_paths(root)
    mols, smiles = parse_qm9pack()
    mols.save(paths["h"])
    mols.select_atoms(mols.numbers != 1).save(paths["noh"])
    with atomic_write(paths["smiles"]) as f:
        f.write("\n".join(smiles) + "\n")
    return paths


def load_qm9(split: str = "all", remove_h: bool = False, root: Path | None = None) -> MoleculeSet:
    """QM9 molecules of one split.

    ``split``: ``all``, ``train``, ``valid``, ``test``, ``train_first_half`` (property predictors)
    or ``train_second_half`` (generator). Builds the cache on first use.
    """
    paths = cache_paths(root)
    key = "noh" if remove_h else "h"
    if not paths[key].exists():
        print(f"building the QM9 cache in {paths[key].parent} (once, ~10 s)", file=sys.stderr, flush=True)
        build_cache(root)
    mols = MoleculeSet.load(paths[key])
    return select_split(mols, split)


def select_split(mols: MoleculeSet, split: str) -> MoleculeSet:
    if split == "all":
        return mols
    if split in SPLIT_CODES:
        return mols.subset(mols.properties["split"] == SPLIT_CODES[split])
    halves = {"train_first_half": 1, "train_second_half": 2}
    if split in halves:
        return mols.subset(mols.properties["half"] == halves[split])
    raise ValueError(f"unknown QM9 split {split!r}; use one of all, train, valid, test, train_first_half, train_second_half")


def one_hot(mols: MoleculeSet) -> np.ndarray:
    """(A, 5) one-hot over H, C, N, O, F (EDM's features; the charge feature is the atomic number)."""
    idx = QM9_VOCAB.encode(mols.numbers)
    return np.eye(len(QM9_VOCAB), dtype=np.float32)[idx]
