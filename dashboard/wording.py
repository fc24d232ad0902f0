"""How the pages speak of the data: of pets on Oxford-IIIT Pet and the synthetic set, of the object on the
user's own images. The store's values are neutral (failure mode 'missed object', object_missed); what is
per domain is only the word for what the masks mark, and whether breeds, species and a trimap exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

PET_SOURCES = ("oxford-pets", "synthetic")  # datasets.source values whose data has breeds, species and trimaps


@dataclass(frozen=True)
class Wording:
    """The words of one sweep's data: `pets` when every dataset of it is pet data."""

    pets: bool = True

    @property
    def thing(self) -> str:
        """What the masks mark: 'pet', else 'object'."""
        return "pet" if self.pets else "object"


def wording_of(sources: Iterable[str | None]) -> Wording:
    """The wording for datasets of these sources: pet words only when all are pet data (an unregistered
    dataset, None, counts as pets: stores before the user's own folders held nothing else)."""
    return Wording(pets=all(s is None or s in PET_SOURCES for s in sources))
