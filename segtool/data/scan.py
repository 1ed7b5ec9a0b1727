"""A split read once when a run starts: headers once, masks decoded once.

`segtool train` needs the data three ways before its first step: every header (a broken
file or a size mismatch stops the run in seconds; the `auto` crop, cache and validation
interval read the sizes), every training mask's classes (the `auto` class weights, head
and orientation, and the ignore-index check), and, with `data.cache`, every pair decoded
into memory. A SplitScan is that one read: `SplitScan.of(pairs)` reads the headers, and
`masks()` decodes each mask once, keeping them for the cache when asked to. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from segtool.config import DataConfig
from segtool.data.doctor import header_problems
from segtool.data.io import read_mask
from segtool.data.pairs import Pair, raise_first


@dataclass
class SplitScan:
    """A split's pairs and their image sizes (H, W), from one read of every header; with
    `keep`, the masks `masks()` decoded, for the cache (`data.cache`)."""

    pairs: list[Pair]
    sizes: list[tuple[int, int]]
    kept: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def wrap(cls, pairs: list[Pair] | SplitScan) -> SplitScan:
        """`pairs` as a scan that decodes masks on demand (no headers read), or the scan itself."""
        return pairs if isinstance(pairs, SplitScan) else cls(list(pairs), [])

    def spread(self, most: int) -> list[int]:
        """Up to `most` pairs spread evenly through the split's masks in path order, each
        mask once: the same sample whatever the list's order."""
        first: dict[str, int] = {}
        for i, (_, mask) in enumerate(self.pairs):
            first.setdefault(str(mask), i)
        paths = sorted(first)
        return [first[p] for p in paths[:: max(1, math.ceil(len(paths) / most))]]

    @classmethod
    def of(cls, pairs: list[Pair]) -> SplitScan:
        """Read every header once; raise on the first pair that cannot be opened or whose
        image and mask sizes differ (`segtool check-data` lists them all)."""
        sizes, problems = header_problems(pairs)
        raise_first(problems, "; segtool check-data lists them all")
        return cls(list(pairs), sizes)

    def mask(self, i: int, data: DataConfig) -> np.ndarray:
        """Pair i's mask: decoded here, or the copy an earlier `masks(keep=True)` kept."""
        found = self.kept.get(i)
        return found if found is not None else read_mask(self.pairs[i][1], data)

    def masks(
        self, data: DataConfig, indices: list[int] | None = None, keep: bool | set[int] = False
    ) -> Iterator[np.ndarray]:
        """The masks of `indices` (all by default), each decoded once: those `keep` names
        (all with True) stay, for the cache or a later look at a sample of them, so nothing
        the run reads again is decoded twice."""
        for i in range(len(self.pairs)) if indices is None else indices:
            mask = self.mask(i, data)
            if keep is True or (keep and i in keep):
                self.kept[i] = mask
            yield mask

    def forget(self) -> None:
        """Drop the kept masks (a run without the cache holds no decoded data)."""
        self.kept.clear()


def scan_splits(train: list[Pair], val: list[Pair]) -> tuple[SplitScan, SplitScan]:
    """Both splits of a run from one header pass: the first problem over both stops it."""
    sizes, problems = header_problems(train + val)
    raise_first(problems, "; segtool check-data lists them all")
    return SplitScan(list(train), sizes[: len(train)]), SplitScan(list(val), sizes[len(train) :])
