"""`Shard`: which part of a sharded stage's work one run does, and the name of the journal it writes.

A stage is sharded when its declaration names a merge (`Stage.merge`, docs/architecture.md "Sharded stages").
`Shard(0, 1)` is the whole run, the default of every sharded stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from is4.manifests.errors import FatalError

T = TypeVar("T")
JOURNAL_GLOB = "shard-*-of-*"  # every shard's file name, whatever the layout (append the suffix)
_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(FatalError, ValueError):
    """A shard that is not `i/n` with 0 <= i < n."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (self.index, self.count)):
            raise ShardError(f"shard {self.index!r}/{self.count!r}: i and n must be integers")
        if self.count < 1:
            raise ShardError(f"shard {self}: the number of shards n must be at least 1")
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard {self}: the shard index i must satisfy 0 <= i < {self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"1/4"` → `Shard(1, 4)`."""
        match = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise ShardError(f"shard {text!r} is not of the form i/n (e.g. 0/4)")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        """The one shard of an unsharded run."""
        return self.count == 1

    def slice(self, items: Sequence[T]) -> list[T]:
        """The i-th of n contiguous ranges of `items` (`len*i//n` to `len*(i+1)//n`): together they cover it once."""
        n = len(items)
        return list(items[n * self.index // self.count : n * (self.index + 1) // self.count])

    def interleaved(self, items: Sequence[T]) -> list[T]:
        """Every n-th item from the i-th on: together they cover `items` once."""
        return list(items[self.index :: self.count])

    def journal_name(self, suffix: str = ".jsonl") -> str:
        """The file this shard writes its records to, e.g. `shard-0-of-2.jsonl` (no two shards share one)."""
        return f"shard-{self.index}-of-{self.count}{suffix}"
