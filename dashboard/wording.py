"""How the pages speak of the data: of pets on Oxford-IIIT Pet and the synthetic set, of the foreground
on the user's own images (a polyp is not a "missed pet").

Only what is shown changes; the store keeps its values (failure_mode 'missed pet', pet_missed), so a
filter shows a mode's wording and passes the stored value on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

PET_SOURCES = ("oxford-pets", "synthetic")  # datasets.source values whose data has breeds, species and trimaps
STORED_MISSED = "missed pet"


@dataclass(frozen=True)
class Wording:
    """The words of one sweep's data: `pets` when every dataset of it is pet data."""

    pets: bool = True

    @property
    def thing(self) -> str:
        """What the masks mark: 'pet', else 'object'."""
        return "pet" if self.pets else "object"

    def mode(self, stored: str) -> str:
        """A failure mode as shown: 'missed pet' becomes 'missed object' on the user's own data."""
        return f"missed {self.thing}" if stored == STORED_MISSED else stored

    def modes(self, stored: Iterable[str]) -> list[str]:
        return [self.mode(m) for m in stored]


def wording_of(sources: Iterable[str | None]) -> Wording:
    """The wording for datasets of these sources: pet words only when all are pet data (an unregistered
    dataset, None, counts as pets: stores before the user's own folders held nothing else)."""
    return Wording(pets=all(s is None or s in PET_SOURCES for s in sources))
