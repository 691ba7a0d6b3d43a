"""Element symbols and the atom vocabularies of QM9 and GEOM-Drugs (EDM's orders).

Kept free of RDKit and ASE so the training path imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Symbols by atomic number, H (1) to Bi (83): enough for every vocabulary used here.
SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi"
).split()
ATOMIC_NUMBER = {s: z for z, s in enumerate(SYMBOLS) if z > 0}


# Allowed (formal charge -> valences) per element, the corrected protocol's Kekulé table
# (chem/determine_bonds.py); valence includes bonds to explicit H.
_ALLOWED = {
    "H": {0: (1,)},
    "B": {0: (3,), -1: (4,)},
    "C": {0: (4,)},
    "N": {0: (3,), 1: (4,), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,)},
    "Al": {0: (3,), -1: (4,)},
    "Si": {0: (4,)},
    "P": {0: (3, 5), 1: (4,)},
    "S": {0: (2, 4, 6), 1: (3,), -1: (1,)},
    "Cl": {0: (1,)},
    "As": {0: (3, 5), 1: (4,)},
    "Br": {0: (1,)},
    "I": {0: (1,)},
    "Hg": {0: (2,)},
    "Bi": {0: (3, 5)},
}
ALLOWED_VALENCES = {ATOMIC_NUMBER[s]: v for s, v in _ALLOWED.items()}


def highest_valence(number: int, charge: int = 0) -> int | None:
    """The largest allowed valence of an element at a formal charge; None where the table has none."""
    return max(ALLOWED_VALENCES.get(int(number), {}).get(int(charge), ()), default=None)


def symbol_to_number(symbol: str) -> int:
    """Atomic number of an element symbol (case-insensitive first letter); 0 if unknown."""
    s = symbol.strip()
    return ATOMIC_NUMBER.get(s[:1].upper() + s[1:].lower(), 0)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of elements: index i in one-hot features is ``symbols[i]``."""

    name: str
    symbols: tuple[str, ...]

    @property
    def numbers(self) -> np.ndarray:
        return np.array([ATOMIC_NUMBER[s] for s in self.symbols], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.symbols)

    def index_table(self) -> np.ndarray:
        """Lookup array: atomic number -> vocabulary index, -1 where the element is not in it."""
        table = np.full(len(SYMBOLS), -1, dtype=np.int64)
        table[self.numbers] = np.arange(len(self.symbols))
        return table

    def encode(self, numbers: np.ndarray) -> np.ndarray:
        """Vocabulary indices of atomic numbers; -1 marks an element outside the vocabulary."""
        numbers = np.asarray(numbers, dtype=np.int64)
        out = np.full(numbers.shape, -1, dtype=np.int64)
        ok = (numbers > 0) & (numbers < len(SYMBOLS))
        out[ok] = self.index_table()[numbers[ok]]
        return out


QM9_VOCAB = Vocabulary("qm9", ("H", "C", "N", "O", "F"))
# EDM's GEOM-Drugs atom decoder, in EDM's order (the order matters for its sorted-pair bond lookup).
GEOM_VOCAB = Vocabulary(
    "geom",
    ("H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi"),
)
VOCABULARIES = {v.name: v for v in (QM9_VOCAB, GEOM_VOCAB)}


def vocabulary(name: str) -> Vocabulary:
    """A vocabulary by name (``qm9`` or ``geom``)."""
    if name not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {name!r}; use one of {', '.join(VOCABULARIES)}")
    return VOCABULARIES[name]
