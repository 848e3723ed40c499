"""A review work directory: images (one flagged without a file), pre-screen scores, automatic decisions, one mask
(the review tests and the App's browser test use it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from is4.manifests.decisions import append_records
from is4.manifests.io import write_manifest

W, H = 64, 48  # not square, so a swapped x and y cannot pass
AUTO_REASON = "both_present 0.010000 < 0.2"
AUTO_TAG = "reject:both_present"  # the tag of that reason: its kind, the scores are in the fields
FLAG_REASON = "generation flag: nsfw"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MASK_ROWS, MASK_COLS = (10, 20), (30, 50)  # the one automatic mask: rows 10..19, columns 30..49 of ids[1]


def image_ids(n: int) -> list[str]:
    return [f"cello_dog_{i}" for i in range(n)]


def queue_rank(i: int, n: int) -> int:
    """A queue order unlike the id order (5 is coprime with the sizes used)."""
    return (i * 5) % n + 1


def make_workdir(root: Path, n: int = 6) -> list[str]:
    """A work directory with n images, a flagged image without a file, prescreen, verification and one mask.

    Verification: ids[0] is an automatic reject, the flagged image an automatic reject, the rest pending.
    """
    ids = image_ids(n)
    rows = []
    for i, image_id in enumerate(ids):
        path = root / "media" / "images" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), ((37 * i) % 256, 90, 200 - 7 * i)).save(path)
        rows.append(
            {
                "image_id": image_id,
                "category_a": "cello",
                "category_b": "dog",
                "template": "{c1} is next to {c2}",
                "style": "cartoon",
                "prompt": f"cello is next to dog, cartoon {i}",
                "seed": 1000 + i,
                "model_id": "tiny-random:sd",
                "model_revision": "rev1",
                "image_path": f"media/images/{image_id}.png",
                "sha256": "0" * 64,
                "flag": None,
            }
        )
    rows.append({**rows[0], "image_id": "cello_dog_flagged", "image_path": None, "flag": "nsfw"})
    write_manifest(root, "images", pd.DataFrame(rows))
    write_manifest(
        root,
        "prescreen",
        pd.DataFrame(
            {
                "image_id": ids,
                "score_a": [0.5 + i / 100 for i in range(n)],
                "score_b": [0.9] * n,
                "both_present": [0.5 + i / 100 for i in range(n)],
                "duplicate_group": ids,
                "queue_rank": [queue_rank(i, n) for i in range(n)],
                "model_id": "tiny-random:clip",
                "model_revision": "r",
            }
        ),
    )
    verdicts = [
        {
            "image_id": image_id,
            "decision": "pending",
            "reason": None,
            "reviewer": None,
            "source": "auto",
            "decided_at": None,
        }
        for image_id in ids
    ]
    verdicts[0].update(decision="reject", reason=AUTO_REASON, reviewer="prescreen", decided_at=T0)
    verdicts.append(
        {
            "image_id": "cello_dog_flagged",
            "decision": "reject",
            "reason": FLAG_REASON,
            "reviewer": "prescreen",
            "source": "auto",
            "decided_at": T0,
        }
    )
    write_verification(root, verdicts)
    mask = np.zeros((H, W), np.uint8)
    mask[MASK_ROWS[0] : MASK_ROWS[1], MASK_COLS[0] : MASK_COLS[1]] = 255
    mask_file = root / "media" / "masks" / f"{ids[1]}_cello.png"
    mask_file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(mask_file)
    write_manifest(
        root,
        "annotations",
        pd.DataFrame(
            [
                {
                    "instance_id": f"{ids[1]}_cello",
                    "image_id": ids[1],
                    "category": "cello",
                    "mask_path": f"media/masks/{ids[1]}_cello.png",
                    "bbox_xyxy": [float(MASK_COLS[0]), float(MASK_ROWS[0]), float(MASK_COLS[1]), float(MASK_ROWS[1])],
                    "method": "auto",
                    "model_id": "tiny-random:sam",
                }
            ]
        ),
    )
    return ids


def write_verification(root: Path, rows: list[dict]) -> None:
    """Write decisions as they are, past the ledger's rules (a stage that does not play by them): log, then manifest."""
    append_records(
        root, [{**row, "decided_at": pd.Timestamp(row["decided_at"]) if row["decided_at"] else None} for row in rows]
    )
    frame = pd.DataFrame(rows, columns=["image_id", "decision", "reason", "reviewer", "source", "decided_at"])
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    write_manifest(root, "verification", frame)
