"""Run a batched model call over many inputs: out-of-memory halves the batch, failing items are retried once.

The model call (`fn`) takes a list of inputs and returns one output per input, in one forward pass; it never
re-batches or catches anything itself. `run_in_batches` owns the batching policy:

- an out-of-memory error on a batch halves the batch size (for the rest of the run, since the next batch of the
  old size would fail the same way) and retries the same inputs, down to one input per call;
- any other error, or out-of-memory on a single input, counts as one failure of every input of that batch; a batch
  of several is then retried one input at a time, so one bad input does not take its neighbours down;
- an input that fails twice is given up: its output is None and its error is recorded; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
MAX_ATTEMPTS = 2

BatchProgressFn = Callable[[int, int], None]  # (done, total); a stage's ProgressFn also takes a message


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (torch's `OutOfMemoryError`, or a backend's 'out of memory' message)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; the message check still applies
        torch = None
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError | MemoryError) and "out of memory" in str(exc).lower()


def release_device_memory() -> None:
    """Return cached CUDA memory to the device (after an out-of-memory error, or between models)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_error(exc: BaseException) -> str:
    """One line naming the exception type and its message."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass
class BatchOutcome(Generic[T]):
    """Per-input outputs (None where the input was given up) and errors, and how the batch size evolved."""

    outputs: list[T | None]
    errors: list[str | None]
    batch_size: int
    halvings: int = 0
    calls: int = 0
    failed: list[int] = field(default_factory=list)


def run_in_batches(
    inputs: Sequence[object], fn: Callable[[list], list[T]], batch_size: int, *, progress: BatchProgressFn | None = None
) -> BatchOutcome[T]:
    """Apply `fn` to `inputs` in order, in batches of `batch_size`, with the out-of-memory and retry policy above."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    n = len(inputs)
    outcome: BatchOutcome[T] = BatchOutcome([None] * n, [None] * n, batch_size)
    failures = [0] * n

    def attempt(indices: list[int]) -> BaseException | None:
        outcome.calls += 1
        try:
            results = fn([inputs[i] for i in indices])
            if len(results) != len(indices):
                raise RuntimeError(f"the model call returned {len(results)} outputs for {len(indices)} inputs")
        except Exception as exc:  # noqa: BLE001 - every failure is recorded against its inputs
            return exc
        for i, result in zip(indices, results, strict=True):
            outcome.outputs[i], outcome.errors[i] = result, None
        return None

    def charge(indices: list[int], exc: BaseException) -> None:
        for i in indices:
            failures[i] += 1
            outcome.errors[i] = describe_error(exc)

    start = 0
    while start < n:
        batch = list(range(start, min(n, start + outcome.batch_size)))
        exc = attempt(batch)
        if exc is not None and is_out_of_memory(exc) and len(batch) > 1:
            release_device_memory()
            outcome.batch_size = max(1, outcome.batch_size // 2)
            outcome.halvings += 1
            continue  # the same inputs again, in a smaller batch
        if exc is not None:
            charge(batch, exc)
            for i in batch:  # one at a time, until each succeeds or has failed MAX_ATTEMPTS times
                while failures[i] < MAX_ATTEMPTS:
                    single = attempt([i])
                    if single is None:
                        break
                    charge([i], single)
        start += len(batch)
        if progress is not None:
            progress(start, n)
    outcome.failed = [i for i in range(n) if outcome.outputs[i] is None and outcome.errors[i] is not None]
    return outcome
