"""SDF and XYZ writers. Every file goes through ``moldiff.files.atomic_write``, so an interrupted
run never leaves a half-written file."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from moldiff.data.elements import SYMBOLS
from moldiff.data.molecules import MoleculeSet
from moldiff.files import atomic_write  # noqa: F401 - re-exported: moldiff.io.atomic_write


def write_xyz(path, mols: MoleculeSet, comments: Sequence[str] | None = None) -> None:
    """Multi-frame XYZ: atom count, comment line, ``symbol x y z`` rows (Å)."""
    with atomic_write(path) as f:
        for m in range(len(mols)):
            z, x = mols[m]
            f.write(f"{len(z)}\n{comments[m] if comments else f'molecule {m}'}\n")
            for zi, (a, b, c) in zip(z.tolist(), np.asarray(x, np.float64).tolist()):
                f.write(f"{SYMBOLS[zi]:<2s} {a:12.6f} {b:12.6f} {c:12.6f}\n")


def write_sdf(path, rdkit_mols: Iterable, names: Sequence[str] | None = None, properties: Sequence[dict] | None = None) -> None:
    """SDF from RDKit molecules (with a 3D conformer). Anything else in ``rdkit_mols`` (None where
    ``to_rdkit(bonds="perceive")`` found no structure) is refused before anything is written."""
    from rdkit import Chem

    rdkit_mols = list(rdkit_mols)
    bad = [k for k, mol in enumerate(rdkit_mols) if not isinstance(mol, Chem.Mol)]
    if bad:
        raise ValueError(f"write_sdf: entries {bad[:10]}{' ...' if len(bad) > 10 else ''} of {len(rdkit_mols)} are not RDKit molecules "
                         f"(e.g. {rdkit_mols[bad[0]]!r}); nothing written. to_rdkit's default (bonds='best') gives a molecule for every entry")
    for what, given in (("names", names), ("properties", properties)):
        if given is not None and len(given) != len(rdkit_mols):
            raise ValueError(f"write_sdf: {len(given)} {what} for {len(rdkit_mols)} molecules; nothing written")
    with atomic_write(path) as f:
        writer = Chem.SDWriter(f)
        try:
            writer.SetKekulize(False)  # a molecule that cannot be kekulised is still written
            for k, mol in enumerate(rdkit_mols):
                mol = Chem.Mol(mol)
                if names is not None:
                    mol.SetProp("_Name", str(names[k]))
                for key, value in (properties[k] if properties else {}).items():
                    mol.SetProp(str(key), str(value))
                writer.write(mol)
        finally:  # closed with its file, also on an error: a writer left open would flush into a closed file later
            writer.close()
