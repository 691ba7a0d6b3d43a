"""Counting bad input: every record that cannot be used is counted by reason, never dropped silently."""

from __future__ import annotations

from collections import Counter

# Reasons a record is rejected before evaluation or training.
UNREADABLE = "unreadable_record"
UNKNOWN_ELEMENT = "unknown_element"
NONFINITE = "nonfinite_coordinates"
EMPTY = "empty_molecule"
# Reasons a record is kept but flagged (EDM evaluates one-atom molecules, e.g. CH4 without H).
SINGLE_ATOM = "single_atom"


class InputReport:
    """Tally of input records: how many were read, rejected (by reason) or flagged, with examples."""

    max_examples = 20

    def __init__(self) -> None:
        self.n_records = 0
        self.rejected: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self.examples: list[str] = []

    def _note(self, reason: str, where: str, detail: str) -> None:
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def reject(self, reason: str, where: str = "", detail: str = "") -> None:
        self.rejected[reason] += 1
        self._note(reason, where, detail)

    def flag(self, reason: str, where: str = "", detail: str = "") -> None:
        self.flagged[reason] += 1
        self._note(reason, where, detail)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def merge(self, other: "InputReport") -> "InputReport":
        self.n_records += other.n_records
        self.rejected.update(other.rejected)
        self.flagged.update(other.flagged)
        self.examples.extend(other.examples[: self.max_examples - len(self.examples)])
        return self

    def to_dict(self) -> dict:
        return {
            "n_records": self.n_records,
            "n_rejected": self.n_rejected,
            "rejected": dict(self.rejected),
            "flagged": dict(self.flagged),
            "examples": list(self.examples),
        }

    def summary(self) -> str:
        if not self.rejected and not self.flagged:
            return f"{self.n_records} records, none rejected"
        parts = [f"{k}={v}" for k, v in sorted(self.rejected.items())]
        flags = [f"{k}={v}" for k, v in sorted(self.flagged.items())]
        s = f"{self.n_records} records, {self.n_rejected} rejected"
        if parts:
            s += " (" + ", ".join(parts) + ")"
        if flags:
            s += "; flagged: " + ", ".join(flags)
        return s
