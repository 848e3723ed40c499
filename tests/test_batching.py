"""The batching policy: out-of-memory halves the batch, failing items get a second try, then are given up."""

from __future__ import annotations

import pytest
import torch

from is4.pipeline.common.batching import describe_error, is_out_of_memory, run_in_batches


class FakeModel:
    """A model call that runs out of memory above `max_batch` inputs and fails on inputs listed in `bad`.

    Its outputs depend only on each input, like greedy decoding in float32, so every retry gives the same text.
    """

    def __init__(self, max_batch: int = 1_000, bad: frozenset[int] = frozenset(), flaky: frozenset[int] = frozenset()):
        self.max_batch = max_batch
        self.bad = bad
        self.flaky = set(flaky)  # fail once, then work
        self.calls: list[list[int]] = []

    def __call__(self, batch: list[int]) -> list[str]:
        self.calls.append(list(batch))
        if len(batch) > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        for x in batch:
            if x in self.bad:
                raise ValueError(f"cannot decode input {x}")
            if x in self.flaky:
                self.flaky.discard(x)
                raise RuntimeError(f"transient failure on {x}")
        return [f"caption {x}" for x in batch]


def test_batches_in_order_with_the_configured_size() -> None:
    model = FakeModel()
    outcome = run_in_batches(list(range(10)), model, 4)
    assert outcome.outputs == [f"caption {i}" for i in range(10)]
    assert outcome.errors == [None] * 10
    assert model.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert (outcome.batch_size, outcome.halvings, outcome.failed) == (4, 0, [])


def test_out_of_memory_halves_the_batch_and_retries_the_same_inputs() -> None:
    model = FakeModel(max_batch=3)
    outcome = run_in_batches(list(range(10)), model, 8)
    assert outcome.outputs == [f"caption {i}" for i in range(10)]
    # 8 fails, 4 fails, 2 works and stays 2 for the rest of the run
    assert model.calls[:3] == [list(range(8)), list(range(4)), [0, 1]]
    assert all(len(c) <= 2 for c in model.calls[3:])
    assert (outcome.batch_size, outcome.halvings) == (2, 2)
    assert outcome.failed == []


def test_out_of_memory_at_batch_size_one_fails_the_item_after_two_attempts() -> None:
    model = FakeModel(max_batch=0)
    outcome = run_in_batches([0, 1], model, 2)
    assert outcome.outputs == [None, None]
    assert outcome.failed == [0, 1]
    assert outcome.errors[0].startswith("OutOfMemoryError: CUDA out of memory")
    assert model.calls == [[0, 1], [0], [0], [1], [1]]


def test_a_bad_item_fails_twice_and_is_skipped_while_its_batch_neighbours_succeed() -> None:
    model = FakeModel(bad=frozenset({5}))
    outcome = run_in_batches(list(range(8)), model, 4)
    assert outcome.outputs[5] is None
    assert outcome.errors[5] == "ValueError: cannot decode input 5"
    assert [o for i, o in enumerate(outcome.outputs) if i != 5] == [f"caption {i}" for i in range(8) if i != 5]
    assert outcome.failed == [5]
    assert model.calls.count([5]) == 1  # batch failure + one single retry = two attempts
    assert outcome.batch_size == 4  # an ordinary error never shrinks the batch


def test_an_item_that_fails_once_succeeds_on_its_second_attempt() -> None:
    model = FakeModel(flaky=frozenset({2}))
    outcome = run_in_batches(list(range(4)), model, 4)
    assert outcome.outputs == [f"caption {i}" for i in range(4)]
    assert outcome.errors == [None] * 4 and outcome.failed == []


def test_a_call_that_returns_the_wrong_number_of_outputs_is_a_failure() -> None:
    outcome = run_in_batches([1, 2], lambda batch: [], 2)
    assert outcome.failed == [0, 1]
    assert outcome.errors[0] == "RuntimeError: the model call returned 0 outputs for 1 inputs"


def test_progress_reports_every_batch() -> None:
    seen: list[tuple[int, int]] = []
    run_in_batches(list(range(5)), FakeModel(), 2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_out_of_memory_detection() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a device error
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        run_in_batches([1], FakeModel(), 0)


def test_describe_error_is_one_line() -> None:
    assert describe_error(RuntimeError("a\n  b")) == "RuntimeError: a b"
    assert describe_error(KeyError()) == "KeyError"
