"""A PNG grid of 2D depictions (RDKit's drawing; coordinates from RDKit's 2D layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moldiff.io.writers import atomic_write


def write_grid_png(path, rdkit_mols: Sequence, legends: Sequence[str] | None = None, per_row: int = 6, max_mols: int = 48, size: int = 220,
                   highlight: Sequence[Sequence[int]] | None = None) -> None:
    """``highlight``: per molecule, the atom indices to draw highlighted (a fragment's kept atoms)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, Draw

    from moldiff.chem.rdkit_mol import quiet_rdkit

    mols, labels, lit = [], [], []
    with quiet_rdkit():
        for k, mol in enumerate(rdkit_mols[:max_mols]):
            m = Chem.Mol(mol)
            m.RemoveAllConformers()
            for i in (highlight[k] if highlight else ()):
                m.GetAtomWithIdx(int(i)).SetBoolProp("moldiff_lit", True)  # survives RemoveHs' renumbering
            try:
                m = Chem.RemoveHs(m)
            except Exception:  # unsanitisable: draw with its hydrogens
                pass
            AllChem.Compute2DCoords(m)
            mols.append(m)
            labels.append(legends[k] if legends else str(k))
            lit.append([a.GetIdx() for a in m.GetAtoms() if a.HasProp("moldiff_lit")])
    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(size, size), legends=labels, returnPNG=False,
                                 highlightAtomLists=lit if highlight else None)
    with atomic_write(Path(path), "wb") as f:
        image.save(f, format="PNG")
