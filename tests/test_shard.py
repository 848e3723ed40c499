"""`Shard`: parsing `i/n`, the slices that cover a stage's work once, the journal names."""

from __future__ import annotations

import pytest

from is4.pipeline.shard import Shard, ShardError


def test_parse() -> None:
    assert Shard.parse("0/1") == Shard() and Shard().whole
    assert Shard.parse("1/4") == Shard(1, 4) and not Shard(1, 4).whole
    assert Shard.parse(" 3 / 4 ") == Shard(3, 4)
    assert str(Shard(3, 4)) == "3/4"
    for text, message in [
        ("4/4", r"0 <= i < 4"),
        ("5/4", r"0 <= i < 4"),
        ("0/0", "at least 1"),
        ("-1/2", "form i/n"),
        ("1", "form i/n"),
        ("a/b", "form i/n"),
        ("1/2/3", "form i/n"),
        ("", "form i/n"),
    ]:
        with pytest.raises(ShardError, match=message):
            Shard.parse(text)


def test_a_shard_is_checked_however_it_is_made() -> None:
    with pytest.raises(ShardError, match="0 <= i < 2"):
        Shard(2, 2)
    with pytest.raises(ShardError, match="integers"):
        Shard(True, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("size", [0, 1, 7, 24])
def test_slices_and_interleaves_cover_the_items_once(n: int, size: int) -> None:
    items = [f"item-{k}" for k in range(size)]
    slices = [Shard(i, n).slice(items) for i in range(n)]
    assert [x for s in slices for x in s] == items  # contiguous, in order, each item once
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    interleaved = [Shard(i, n).interleaved(items) for i in range(n)]
    assert sorted(x for s in interleaved for x in s) == sorted(items)
    assert all(items.index(x) % n == i for i, s in enumerate(interleaved) for x in s)


def test_journal_names_differ_per_shard() -> None:
    assert Shard(0, 2).journal_name() == "shard-0-of-2.jsonl"
    assert Shard(1, 2).journal_name(".json") == "shard-1-of-2.json"
    names = {Shard(i, n).journal_name() for n in range(1, 6) for i in range(n)}
    assert len(names) == 15
