"""A hand-made work directory with every manifest the match and release stages read (tests of both use it)."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.io import wavfile

from is4.config import MatchConfig, ReleaseConfig, parse_config
from is4.manifests.io import read_manifest, write_manifest
from is4.pipeline.match import run_match
from is4.pipeline.verification import HUMAN, update_verification

SEED = 7
IMAGE_W, IMAGE_H = 96, 80  # not square: boxes scale differently in x and y
MODEL_ID = "tiny-random:stable-diffusion"
MODEL_REVISION = "0123456789abcdef0123456789abcdef01234567"
SAM_ID = "tiny-random:sam"
SAM_REVISION = "fedcba9876543210fedcba9876543210fedcba98"

CATEGORIES = [
    # label, object, category_id
    ("dog barking", "dog", "dog"),
    ("dog growling", "dog", "dog"),  # two labels merged into one category
    ("playing cello", "cello", "cello"),
    ("cat meowing", "cat", "cat"),  # a category no image shows
    ("wind noise", None, None),  # not depictable
]

# clip id, label, split, status
CLIPS = [
    ("dogAAAAAAA1_000010", "dog barking", "test", "ok"),
    ("dogAAAAAAA2_000020", "dog growling", "test", "ok"),
    ("dogAAAAAAA3_000030", "dog barking", "test", "failed"),  # never usable
    ("dogAAAAAAA4_000040", "dog barking", "train", "ok"),  # other split
    ("celloAAAAA1_000010", "playing cello", "test", "ok"),
    ("celloAAAAA2_000020", "playing cello", "test", "ok"),
    ("celloAAAAA3_000030", "playing cello", "test", "ok"),
    ("celloAAAAA4_000040", "playing cello", "test", "ok"),
    ("catAAAAAAA1_000010", "cat meowing", "test", "ok"),
]
USABLE = {
    "dog": {"dogAAAAAAA1_000010", "dogAAAAAAA2_000020"},
    "cello": {"celloAAAAA1_000010", "celloAAAAA2_000020", "celloAAAAA3_000030", "celloAAAAA4_000040"},
}

# image id, style, decision; each image shows a cello and a dog
IMAGES = [
    ("cello_dog_0", "realistic", "accept"),
    ("cello_dog_1", "cartoon", "accept"),
    ("cello_dog_2", "realistic", "accept"),
    ("cello_dog_3", "graphic", "reject"),
]
ACCEPTED = [i for i, _, d in IMAGES if d == "accept"]
OBJECT_COLOURS = {"cello": (230.0, 40.0, 40.0), "dog": (40.0, 40.0, 230.0)}


def _mask_box(mask: np.ndarray) -> list[float]:
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _object_mask(n: int, category: str) -> np.ndarray:
    """An ellipse (cello) or a rectangle (dog) at a different place in each image, at image resolution."""
    yy, xx = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
    if category == "cello":
        cx, cy, rx, ry = 20 + 7 * n, 25 + 3 * n, 11 + n, 17
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    x1, y1 = 50 + 5 * n, 37 + 2 * n
    return (xx >= x1) & (xx < x1 + 23 + n) & (yy >= y1) & (yy < y1 + 19)


def _clip_row(row: int, clip_id: str, label: str, split: str, status: str) -> dict:
    ok = status == "ok"
    return {
        "row": row,
        "clip_id": clip_id,
        "ytid": clip_id[:11],
        "start_sec": int(clip_id[12:]),
        "label": label,
        "split": split,
        "status": status,
        "reason": None if ok else "removed video",
        "retryable": False,
        "attempts": 1,
        "source_path": None,
        "source_bytes": None,
        "frame_path": None,
        "audio_path": f"media/audio/{clip_id}.wav" if ok else None,
        "spec_path": None,
        "mel_path": None,
        "frame_width": None,
        "frame_height": None,
        "source_audio_sec": None,
        "padded_sec": None,
        "trimmed_sec": None,
        "peak_dbfs": None,
    }


def make_workdir(root: Path) -> Path:
    """A hand-made work directory with every manifest the match and release stages read, and their media."""
    work = Path(root)
    rng = np.random.default_rng(0)
    write_manifest(
        work,
        "categories",
        pd.DataFrame(
            [
                {
                    "label": label,
                    "object": obj,
                    "category_id": cid,
                    "instrument": cid == "cello",
                    "depictable": cid is not None,
                }
                for label, obj, cid in CATEGORIES
            ]
        ),
    )

    (work / "media/audio").mkdir(parents=True)
    for i, (clip_id, *_rest) in enumerate(CLIPS):
        t = np.arange(8000) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t) * 32767).astype(np.int16)
        wavfile.write(work / f"media/audio/{clip_id}.wav", 16000, wave)
    write_manifest(work, "clips", pd.DataFrame([_clip_row(i + 2, *c) for i, c in enumerate(CLIPS)]))

    (work / "media/images").mkdir(parents=True)
    (work / "media/masks").mkdir(parents=True)
    image_rows, verification_rows, annotation_rows = [], [], []
    for n, (image_id, style, decision) in enumerate(IMAGES):
        # A smooth background with a little noise; each object painted in its own colour where its mask is.
        yy, xx = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
        background = np.stack([xx * 2.0, yy * 2.0, np.full_like(xx, 60.0 * n, dtype=float)], axis=-1)
        pixels = background + rng.normal(0, 4, size=background.shape)
        for category in ("cello", "dog"):
            pixels[_object_mask(n, category)] = OBJECT_COLOURS[category]
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        path = f"media/images/{image_id}.png"
        Image.fromarray(pixels).save(work / path)
        image_rows.append(
            {
                "image_id": image_id,
                "category_a": "cello",
                "category_b": "dog",
                "template": "{c1} is next to {c2}",
                "style": style,
                "prompt": "a cello is next to a dog",
                "seed": n,
                "model_id": MODEL_ID,
                "model_revision": MODEL_REVISION,
                "image_path": path,
                "sha256": hashlib.sha256((work / path).read_bytes()).hexdigest(),
            }
        )
        verification_rows.append(
            {
                "image_id": image_id,
                "decision": decision,
                "reason": None if decision == "accept" else "artefact",
                "reviewer": "tester",
                "source": "human",
                "decided_at": pd.Timestamp("2025-01-01", tz="UTC"),
            }
        )
        for category in ("cello", "dog"):
            iid = f"{image_id}_{category}"
            mask = _object_mask(n, category)
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(work / f"media/masks/{iid}.png")
            annotation_rows.append(
                {
                    "instance_id": iid,
                    "image_id": image_id,
                    "category": category,
                    "mask_path": f"media/masks/{iid}.png",
                    "bbox_xyxy": _mask_box(mask),
                    "method": "auto",
                    "model_id": SAM_ID,
                    "model_revision": SAM_REVISION,
                }
            )
    write_manifest(work, "images", pd.DataFrame(image_rows))
    update_verification(work, verification_rows, HUMAN)  # the manifest and the decision log it projects
    write_manifest(work, "annotations", pd.DataFrame(annotation_rows))
    return work


def empty_mask(work: Path, instance_id: str) -> None:
    """Make one annotation an empty SAM mask, as annotate writes it: an all-zero PNG and no box."""
    frame = read_manifest(work, "annotations")
    row = frame.index[frame["instance_id"] == instance_id][0]
    Image.fromarray(np.zeros((IMAGE_H, IMAGE_W), np.uint8)).save(work / frame.at[row, "mask_path"])
    frame.at[row, "bbox_xyxy"] = None
    write_manifest(work, "annotations", frame)


def drop_annotation(work: Path, instance_id: str) -> None:
    frame = read_manifest(work, "annotations")
    write_manifest(work, "annotations", frame[frame["instance_id"] != instance_id])


# The release section and whole build config the release tests build with.
CFG = ReleaseConfig(version="0.1.0", date=datetime.date(2026, 12, 7))
BUILD_CONFIG = parse_config(
    {
        "profile": "test",
        "seed": SEED,
        "models": {
            "image_generator": {"model_id": MODEL_ID, "revision": "main"},
            "segmenter": {"model_id": "tiny-random:sam", "revision": "main"},
        },
    }
).model_dump(mode="json")


def matched_workdir(root: Path) -> Path:
    """`make_workdir` with the match stage run: what the release stage reads."""
    work = make_workdir(root)
    run_match(work, MatchConfig(), SEED)
    return work
