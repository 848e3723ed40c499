"""The append-only JSON-lines journal that lets a killed stage resume."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from is4.manifests.journal import Journal


def test_load_of_missing_journal_is_empty(tmp_path: Path) -> None:
    assert Journal(tmp_path / "none.jsonl", "clip_id").load() == {}


def test_append_creates_parent_directories(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "a" / "b" / "j.jsonl", "clip_id")
    journal.append({"clip_id": "x", "status": "ok"})
    assert journal.load() == {"x": {"clip_id": "x", "status": "ok"}}


def test_append_then_load_keeps_the_last_record_per_key(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    journal.append({"clip_id": "a", "status": "failed", "attempts": 1})
    journal.append({"clip_id": "b", "status": "ok", "attempts": 1})
    journal.append({"clip_id": "a", "status": "ok", "attempts": 2})
    loaded = journal.load()
    assert loaded == {
        "a": {"clip_id": "a", "status": "ok", "attempts": 2},
        "b": {"clip_id": "b", "status": "ok", "attempts": 1},
    }


def test_records_survive_a_new_journal_object(tmp_path: Path) -> None:
    record = {"clip_id": "a", "value": None, "nested": {"k": [1, 2]}}
    Journal(tmp_path / "j.jsonl", "clip_id").append(record)
    assert Journal(tmp_path / "j.jsonl", "clip_id").load() == {"a": record}


def test_one_record_per_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    journal.append({"clip_id": "a", "text": "line\nbreak"})
    journal.append({"clip_id": "b", "text": "ünïcödé"})
    lines = (tmp_path / "j.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["clip_id"] for line in lines] == ["a", "b"]
    assert journal.load()["a"]["text"] == "line\nbreak"
    assert journal.load()["b"]["text"] == "ünïcödé"


def test_records_without_the_key_or_not_objects_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text('{"other": 1}\n[1, 2]\n"text"\n{"clip_id": "a", "v": 1}\n')
    assert Journal(path, "clip_id").load() == {"a": {"clip_id": "a", "v": 1}}


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    journal.append({"clip_id": "a", "status": "ok"})
    with open(journal.path, "ab") as fh:
        fh.write(b'{"clip_id": "b", "stat')  # the process died mid-write
    assert journal.load() == {"a": {"clip_id": "a", "status": "ok"}}


def test_append_after_a_torn_line_is_loaded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    journal.append({"clip_id": "a", "status": "ok"})
    with open(journal.path, "ab") as fh:
        fh.write(b'{"clip_id": "b", "stat')
    Journal(journal.path, "clip_id").append({"clip_id": "b", "status": "ok"})
    journal.append({"clip_id": "c", "status": "failed"})
    assert journal.load() == {
        "a": {"clip_id": "a", "status": "ok"},
        "b": {"clip_id": "b", "status": "ok"},
        "c": {"clip_id": "c", "status": "failed"},
    }


def test_torn_update_does_not_replace_the_earlier_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    journal.append({"clip_id": "a", "attempts": 1})
    with open(journal.path, "ab") as fh:
        fh.write(b'{"attempts": 2, "clip_id": "a"')  # torn just before the closing brace
    assert journal.load()["a"]["attempts"] == 1


def test_journal_that_is_only_a_torn_line_loads_empty_and_accepts_appends(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"clip_id": "a"')
    journal = Journal(path, "clip_id")
    assert journal.load() == {}
    journal.append({"clip_id": "b"})
    assert journal.load() == {"b": {"clip_id": "b"}}


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", "clip_id")
    threads_n, per_thread = 8, 50
    barrier = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            journal.append({"clip_id": f"t{t}_{i}", "thread": t, "payload": "x" * 200})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = journal.load()
    assert len(loaded) == threads_n * per_thread
    assert loaded["t7_49"]["thread"] == 7
    lines = journal.path.read_text().splitlines()
    assert len(lines) == threads_n * per_thread
    assert all(json.loads(line)["payload"] == "x" * 200 for line in lines)
