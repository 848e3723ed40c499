"""Synthetic colour-disc / tone data for the trainer tests and benchmarks, written through the project's writers.

K colours <-> K tones: a training clip's frame is a disc of colour k at a random place on a noisy grey background
(half of them with a second disc of another colour as a distractor), its audio a tone of pitch k with random phase
and light noise. A mini release in the official layout holds two-disc 224x224 images, each disc an instance with
its colour's tone and its box (`is4_bbox.json`), so `is4 eval` scores a model's maps.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.io import wavfile

from is4.manifests.atomic import atomic_write_bytes
from is4.manifests.io import write_manifest

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 230)}
TONES = {"red": 400.0, "green": 1100.0, "blue": 2500.0}
RATE = 16000


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, RATE, (np.clip(samples, -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def tone(colour: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """The colour's tone, random phase, light noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.5 * np.sin(2 * np.pi * TONES[colour] * t + rng.uniform(0, 2 * np.pi)) + 0.02 * rng.standard_normal(len(t))


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy grey frame."""
    return np.clip(128 + 20 * rng.standard_normal((size, size, 3)), 0, 255).astype(np.uint8)


def draw_disc(img: np.ndarray, colour: str, cx: float, cy: float, r: float) -> tuple[int, int, int, int]:
    """Paint a disc; returns its box (x1, y1, x2, y2) in pixel edges."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    inside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    img[inside] = COLOURS[colour]
    ys, xs = np.nonzero(inside)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _place(rng: np.random.Generator, size: int, r: float, avoid: tuple[float, float] | None) -> tuple[float, float]:
    cx = cy = size / 2
    for _ in range(100):
        cx, cy = rng.uniform(r, size - r, size=2)
        if avoid is None or (cx - avoid[0]) ** 2 + (cy - avoid[1]) ** 2 > (2.2 * r) ** 2:
            return float(cx), float(cy)
    return float(cx), float(cy)


def _clip_id(n: int) -> str:
    return f"syn{n:08d}_{n % 1000:06d}"


def write_workdir(
    work: Path,
    n_clips: int = 240,
    *,
    size: int = 64,
    radius: float = 0.18,
    seconds: float = 2.0,
    seed: int = 0,
    distractor_p: float = 0.5,
    shuffle_tones: bool = False,
) -> list[str]:
    """A work directory with `n_clips` ok training clips (frames, wavs, clips manifest); returns their ids.
    `shuffle_tones`: each clip's tone is of a random colour (no audio-visual correspondence: a control)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows, ids = [], []
    for n in range(n_clips):
        colour = names[n % len(names)]
        img = background(size, rng)
        r = radius * size
        cx, cy = _place(rng, size, r, None)
        if rng.random() < distractor_p:
            other = names[(names.index(colour) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
            draw_disc(img, other, *_place(rng, size, r, (cx, cy)), r)
        draw_disc(img, colour, cx, cy, r)
        cid = _clip_id(n)
        frame, audio = f"media/frames/{cid}.jpg", f"media/audio/{cid}.wav"
        atomic_write_bytes(work / frame, _jpeg(img))
        heard = names[int(rng.integers(len(names)))] if shuffle_tones else colour
        atomic_write_bytes(work / audio, _wav(tone(heard, seconds, rng)))
        rows.append(
            {
                "row": n + 1,
                "clip_id": cid,
                "ytid": cid[:11],
                "start_sec": n % 1000,
                "label": colour,
                "split": "train",
                "status": "ok",
                "reason": None,
                "retryable": False,
                "attempts": 1,
                "source_path": None,
                "source_bytes": None,
                "frame_path": frame,
                "audio_path": audio,
                "spec_path": None,
                "mel_path": None,
                "frame_width": size,
                "frame_height": size,
                "source_audio_sec": seconds,
                "padded_sec": 0.0,
                "trimmed_sec": 0.0,
                "peak_dbfs": -6.0,
            }
        )
        ids.append(cid)
    write_manifest(work, "clips", pd.DataFrame(rows))
    return ids


def write_release(out: Path, n_images: int = 24, *, radius: float = 0.18, seconds: float = 2.0, seed: int = 1) -> Path:
    """A mini IS4 release: two-disc 224x224 images, one instance per disc with its tone, `is4_bbox.json`."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    entries = []
    for n in range(n_images):
        a, b = rng.choice(len(names), size=2, replace=False)
        img = background(224, rng)
        r = radius * 224
        ca = _place(rng, 224, r, None)
        cb = _place(rng, 224, r, ca)
        boxes = {names[a]: draw_disc(img, names[a], *ca, r), names[b]: draw_disc(img, names[b], *cb, r)}
        for colour, box in boxes.items():
            iid = f"img{n:03d}_{colour}"
            atomic_write_bytes(out / "visual_frames" / f"{iid}.jpg", _jpeg(img))
            atomic_write_bytes(out / "audio_wav" / f"{iid}.wav", _wav(tone(colour, seconds, rng)))
            entries.append({"image": f"visual_frames/{iid}.jpg", "audio": f"audio_wav/{iid}.wav", "gt_box": list(box)})
    atomic_write_bytes(out / "is4_bbox.json", json.dumps(entries, indent=1).encode())
    return out


def tiny_train_section(release: Path | None = None, **overrides) -> dict:
    """A `train` config section for the synthetic data on the CPU: a small-receptive-field trunk, 64-px frames, a
    0.5-s audio window; `overrides` replace top-level keys, `alignment__<key>` alignment keys."""
    section = {
        "epochs": 8,
        "batch_size": 24,
        "lr": 0.003,
        "num_workers": 0,
        "max_steps_per_epoch": 20,
        "cpu_threads": 1,
        "eval": {"release": str(release), "metric": "iiou_adaptive"} if release else {},
        "alignment": {
            "image_size": 64,
            "width": 16,
            "blocks": [1, 1, 0, 0],
            "strides": [1, 2, 1, 1],
            "proj_dim": 32,
            "sl_pool": "max",
            "views": ["orig", "aug"],
            # no colour jitter / grayscale: colour is what names the tone here
            "augment": {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "crop_scale": [0.5, 1.0]},
            "audio": {"clip_seconds": 2.0, "window": [0.5, 1.0], "nperseg": 128, "noverlap": 0},
        },
    }
    for key, value in overrides.items():
        if key.startswith("alignment__"):
            section["alignment"][key.removeprefix("alignment__")] = value
        else:
            section[key] = value
    return section


# The `train.acl` settings for the synthetic data on the CPU (clips written with `size=64, seconds=1.0`): the tiny
# CLIPSeg and BEATs, 64-px frames, 1-s clips.
TINY_ACL = {
    "clipseg": {"model_id": "tiny-random:clipseg"},
    "audio_encoder": "tiny-random:beats",
    "image_size": 64,
    "resize": 72,
    "audio_seconds": 1.0,
    "mask_init_w": 1.0,
    "mask_init_b": 0.5,
}


def write_captions(
    work: Path, ids: list[str], *, null_every: int = 6, flag_every: int = 7, all_flagged: bool = False
) -> None:
    """A captions manifest for `write_workdir`'s clips: the clip's colour name as its object phrase, null for every
    `null_every`-th clip (i % null_every == null_every - 1), flagged `object_phrase:garbage` for i % flag_every == 3
    (every clip with `all_flagged`), as the ACL caption loss reads them."""
    from is4.manifests.schema import TABLES

    names = list(COLOURS)
    rows = []
    for i, cid in enumerate(ids):
        flags = "audio_caption:garbage"
        if all_flagged or i % flag_every == 3:
            flags += ",object_phrase:garbage"
        phrase = None if i % null_every == null_every - 1 else names[i % len(names)]
        rows.append(
            {"item_id": cid, "source": "clip", "object_phrase": phrase, "prompt_version": "synthetic", "flags": flags}
        )
    frame = pd.DataFrame(rows)
    for column in TABLES["captions"].column_names:
        if column not in frame:
            frame[column] = None
    write_manifest(work, "captions", frame)
