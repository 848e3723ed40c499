"""The ingest stage end to end: real yt-dlp, real ffmpeg, a loopback server, and checks on what was produced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from is4.config import DownloadConfig, IngestConfig
from is4.manifests.io import manifest_path, read_manifest
from is4.pipeline.ingest.export import export_training_layout
from is4.pipeline.ingest.ingest import JOURNAL, run_ingest
from is4.pipeline.ingest.status import ingest_status
from tests.conftest import (
    COLOURS,
    CORRUPT_ID,
    GOOD_IDS,
    MISSING_ID,
    PRIVATE_ID,
    SHORT_ID,
    SILENT_ID,
    SLOW_ID,
    TONES,
    segment_at,
)
from tests.support import ingest_cmd, killed_at_exit, wait_until

SR = 16_000
SPEC_HOP = 512 - 274  # samples between spectrogram columns


def _cfg(server, workers: int = 2, retries: int = 0) -> IngestConfig:
    return IngestConfig(
        download=DownloadConfig(
            url_template=server.url_template(),
            workers=workers,
            retries=retries,
            retry_backoff_s=0.01,
            socket_timeout_s=2,
        )
    )


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SR)[np.argmax(spectrum)])


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


MIXED_ROWS = [
    f"{GOOD_IDS[0]},0,dog barking,train",
    f"{GOOD_IDS[1]},7,playing cello,train",
    f'{GOOD_IDS[2]},13,"bird chirping, tweeting",test',
    f"{SILENT_ID},0,dog barking,train",
    f"{CORRUPT_ID},0,dog barking,train",
    f"{MISSING_ID},0,dog barking,train",
    f"{PRIVATE_ID},0,dog barking,train",
    f"{SHORT_ID},20,cat meowing,train",
    "bad id!,0,dog barking,train",
    f"{GOOD_IDS[0]},0,no such label,train",
]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, video_dir):
    """One ingest over every kind of row; shared by the content tests (it is the expensive part)."""
    from is4.pipeline.demo.media_server import MediaServer
    from tests.conftest import FaultInjectingHandler

    work = tmp_path_factory.mktemp("work")
    csv = _write_csv(work.parent / "mixed.csv", MIXED_ROWS)
    with MediaServer(video_dir, handler=FaultInjectingHandler) as server:
        summary = run_ingest(csv, work, _cfg(server), seed=0)
    return work, summary, read_manifest(work, "clips").set_index("row")


def test_every_row_gets_a_status_and_a_reason(mixed_run) -> None:
    _, summary, clips = mixed_run
    assert (summary.ok, summary.failed, summary.invalid) == (4, 4, 2)
    expect = {
        1: "ok",
        2: "ok",
        3: "ok",
        4: "failed",
        5: "failed",
        6: "failed",
        7: "failed",
        8: "ok",
        9: "invalid",
        10: "invalid",
    }
    assert clips["status"].to_dict() == expect
    reasons = clips["reason"].to_dict()
    assert reasons[4].startswith("silent audio")
    assert reasons[5].startswith("corrupt-source")
    assert reasons[6].startswith("not-found")
    assert reasons[7].startswith("private")
    assert reasons[9].startswith("invalid-ytid") and pd_isna(clips.loc[9, "clip_id"])
    assert reasons[10].startswith("unknown-label")
    assert summary.failures_by_reason == {
        "corrupt-source": 1,
        "invalid-ytid": 1,
        "not-found": 1,
        "private": 1,
        "silent audio": 1,
        "unknown-label": 1,
    }
    # Retry policy recorded for reruns: none of these can get better (a junk file is no video on any rerun).
    assert clips.loc[[4, 5, 6, 7], "retryable"].tolist() == [False, False, False, False]


def test_status_says_what_a_rerun_retries(mixed_run) -> None:
    work, _, _ = mixed_run
    (run,) = ingest_status(work)
    assert run.selected == 8 and run.csv == str((work.parent / "mixed.csv").resolve())
    assert dict(run.by_status) == {"ok": 4, "failed": 4}
    assert dict(run.by_reason) == {"corrupt-source": 1, "not-found": 1, "private": 1, "silent audio": 1}
    assert run.retryable == 0  # every failure is permanent
    assert run.command.startswith("is4 ingest --csv ") and "CONFIG" in run.command  # no command was recorded


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


@pytest.mark.parametrize(("row", "ytid_index", "start"), [(1, 0, 0), (2, 1, 7), (3, 2, 13)])
def test_centre_frame_shows_the_midpoint_of_the_clip(mixed_run, row: int, ytid_index: int, start: int) -> None:
    work, _, clips = mixed_run
    frame = Image.open(work / clips.loc[row, "frame_path"])
    assert min(frame.size) == 224
    mean = np.asarray(frame.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)
    expected = _hex_rgb(COLOURS[segment_at(start + 5.0)])
    assert np.abs(mean - expected).max() < 25, (mean, expected)


@pytest.mark.parametrize(("row", "start"), [(1, 0), (2, 7), (3, 13)])
def test_wav_has_rate_length_and_the_tone_of_each_moment(mixed_run, row: int, start: int) -> None:
    work, _, clips = mixed_run
    rate, audio = wavfile.read(work / clips.loc[row, "audio_path"])
    assert rate == SR and audio.ndim == 1 and audio.dtype == np.int16 and len(audio) == 10 * SR
    for t in (0.5, 4.0, 9.0):
        if abs((start + t) % 5.0) < 0.6 or abs((start + t) % 5.0) > 4.4:
            continue  # too close to a tone change
        window = audio[int((t - 0.25) * SR) : int((t + 0.25) * SR)].astype(float)
        assert _dominant_hz(window) == pytest.approx(TONES[segment_at(start + t)], abs=10)


@pytest.mark.parametrize(("row", "start"), [(1, 0), (2, 7), (3, 13)])
def test_spectrogram_peak_sits_at_the_tone(mixed_run, row: int, start: int) -> None:
    work, _, clips = mixed_run
    spec = np.load(work / clips.loc[row, "spec_path"])
    mel = np.load(work / clips.loc[row, "mel_path"])
    assert spec.shape[0] == 257 and spec.dtype == np.float32
    assert mel.shape == (998, 128)
    t = 2.5
    column = spec[:, int(t * SR / SPEC_HOP)]
    bin_hz = SR / 512
    assert np.argmax(column) * bin_hz == pytest.approx(TONES[segment_at(start + t)], abs=bin_hz)


def test_short_source_is_padded_and_the_padding_recorded(mixed_run) -> None:
    work, _, clips = mixed_run
    assert clips.loc[8, "padded_sec"] == pytest.approx(3.0, abs=0.1)
    _, audio = wavfile.read(work / clips.loc[8, "audio_path"])
    assert len(audio) == 10 * SR
    assert np.abs(audio[int(7.1 * SR) :]).max() == 0
    assert np.abs(audio[: int(6.9 * SR)]).max() > 1000


def test_manifest_paths_are_relative_and_no_temporary_files_remain(mixed_run) -> None:
    work, _, clips = mixed_run
    for column in ("frame_path", "audio_path", "spec_path", "mel_path", "source_path"):
        for value in clips[column].dropna():
            assert not value.startswith("/") and (work / value).is_file()
    leftovers = [p for p in (work / "media").rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert not (work / "media/frames" / f"{SILENT_ID}_000000.jpg").exists(), "a rejected clip keeps no outputs"


def test_rerun_retries_only_transient_failures(mixed_run, video_dir) -> None:
    from is4.pipeline.demo.media_server import MediaServer
    from tests.conftest import FaultInjectingHandler

    work, first, _ = mixed_run
    frames = {p.name: p.stat().st_mtime_ns for p in (work / "media/frames").iterdir()}
    with MediaServer(video_dir, handler=FaultInjectingHandler) as server:
        again = run_ingest(work.parent / "mixed.csv", work, _cfg(server), seed=0)
        requests = server.requests
    assert again.processed == 0 and again.reused == 8  # every failure is permanent: nothing is fetched again
    assert requests == 0
    assert {p.name: p.stat().st_mtime_ns for p in (work / "media/frames").iterdir()} == frames
    assert (again.ok, again.failed, again.invalid) == (first.ok, first.failed, first.invalid)


def test_stalled_source_is_a_retryable_timeout(media_server, tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "slow.csv", [f"{SLOW_ID},0,dog barking,train"])
    summary = run_ingest(csv, tmp_path / "work", _cfg(media_server, retries=1))
    clips = read_manifest(tmp_path / "work", "clips")
    assert summary.failed == 1
    assert clips.loc[0, "reason"].startswith("timeout") and bool(clips.loc[0, "retryable"])
    assert clips.loc[0, "attempts"] == 2


def test_same_bytes_with_one_or_two_workers(media_server, tmp_path: Path) -> None:
    rows = [f"{ytid},{start},dog barking,train" for ytid in GOOD_IDS for start in (0, 10)]
    csv = _write_csv(tmp_path / "rows.csv", rows)
    for workers in (1, 2):
        run_ingest(csv, tmp_path / f"w{workers}", _cfg(media_server, workers=workers))
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert manifest_path(one, "clips").read_bytes() == manifest_path(two, "clips").read_bytes()
    for sub in ("frames", "audio", "spec", "mel"):
        names = sorted(p.name for p in (one / "media" / sub).iterdir())
        assert len(names) == 6
        for name in names:
            assert (one / "media" / sub / name).read_bytes() == (two / "media" / sub / name).read_bytes()


def test_killed_run_resumes_without_redoing_finished_clips(media_server, tmp_path: Path) -> None:
    rows = [f"{ytid},{start},dog barking,train" for ytid in GOOD_IDS for start in (0, 5, 10, 15)]
    csv = _write_csv(tmp_path / "rows.csv", rows)
    work = tmp_path / "work"
    proc = subprocess.Popen(
        ingest_cmd(csv, work, media_server.url_template(), "--workers", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = work / JOURNAL

    def final_records() -> int:  # `downloaded` lines are not a clip's record
        return sum('"status": "downloaded"' not in line for line in journal.read_text().splitlines())

    with killed_at_exit(proc):
        wait_until(lambda: journal.exists() and final_records() >= 3, timeout=60)
    done_before = final_records()
    assert 3 <= done_before < len(rows), "the run was killed part-way"
    assert not manifest_path(work, "clips").exists(), "a killed run never wrote a manifest"
    finished = {p.name: p.stat().st_mtime_ns for p in (work / "media/frames").iterdir()}

    summary = run_ingest(csv, work, _cfg(media_server))
    assert summary.reused == done_before
    assert summary.processed == len(rows) - done_before
    assert summary.ok == len(rows)
    for name, mtime in finished.items():
        if (work / "media/frames" / name).stat().st_mtime_ns == mtime:
            continue
        pytest.fail(f"{name} was extracted again")
    for row in read_manifest(work, "clips").itertuples():
        rate, audio = wavfile.read(work / row.audio_path)
        assert rate == SR and len(audio) == 10 * SR


def test_deleted_output_is_made_again(media_server, tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "one.csv", [f"{GOOD_IDS[0]},0,dog barking,train"])
    work = tmp_path / "work"
    run_ingest(csv, work, _cfg(media_server))
    wav = next((work / "media/audio").iterdir())
    wav.unlink()
    summary = run_ingest(csv, work, _cfg(media_server))
    assert summary.processed == 1 and wav.is_file()
    assert media_server.requests <= 3, "the downloaded section was reused, not fetched again"


def test_training_layout_export(mixed_run, tmp_path: Path) -> None:
    work, _, clips = mixed_run
    out, n = export_training_layout(work, tmp_path / "layout")
    ok = clips[clips["status"] == "ok"]
    assert n == len(ok) == 4
    ids = (out / "ids.csv").read_text().splitlines()
    assert ids[0] == "clip_id,label,split"
    assert sorted(line.split(",")[0] for line in ids[1:]) == sorted(ok["clip_id"])
    assert '"bird chirping, tweeting"' in "\n".join(ids)
    for clip in ok.itertuples():
        assert (out / "frames" / f"{clip.clip_id}.jpg").read_bytes() == (work / clip.frame_path).read_bytes()
        assert (out / "audio" / f"{clip.clip_id}.wav").read_bytes() == (work / clip.audio_path).read_bytes()
