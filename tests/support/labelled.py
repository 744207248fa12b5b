"""The labelled evaluation set for technical-vs-CS classification (tests/data/classification).

Each ``.eml`` file there is one realistic inbound customer email; ``labels.csv`` says whether a
Customer Success team would want it routed to Support (``technical``) or kept with the CSM
(``cs``), with a short note on why. Notes of non-English emails carry a ``lang:xx`` marker.
The set is written independently of the classification rules it is meant to measure.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_DIR", "LABELS", "Labelled", "labelled_set"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "classification"
LABELS = ("technical", "cs")


@dataclass(frozen=True)
class Labelled:
    """One labelled email: its file, ``technical`` or ``cs``, and a note on what is tricky."""

    path: Path
    label: str
    note: str

    @property
    def raw(self) -> bytes:
        """The email exactly as stored, RFC 5322 bytes."""
        return self.path.read_bytes()

    @property
    def name(self) -> str:
        """The file name, handy as a pytest id."""
        return self.path.name


def labelled_set(directory: Path = DATA_DIR) -> list[Labelled]:
    """Rows of ``labels.csv`` in ``directory``, in file order, paths resolved next to it."""
    with (directory / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return [
            Labelled(directory / row["file"], row["label"].strip(), row["note"].strip())
            for row in csv.DictReader(fh)
        ]
