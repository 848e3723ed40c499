"""The caption stage: LLM-guidance text for ACL-SSL training — image caption, audio caption, sounding object.

Items are the ingested VGGSound clips (status ok, split in `captions.splits`: centre frame + 10-s audio) and, with
`captions.sources` including `instances`, the matched IS4 instances (generated image + matched clip's audio). Three
roles run one after the other, each model loaded only when some item needs it and released before the next:

1. `image_caption`: BLIP-2 on the image (`models.image_captioner`);
2. `audio_caption`: Qwen2-Audio through transformers, or GAMA through its authors' code (`models.audio_captioner`,
   `captions.audio.backend`);
3. `object_phrase`: the chat LLM (`models.object_phrase`) with ACL-SSL's prompt over both captions; the raw answer
   is kept and normalised to at most 3 words.

Batches follow `captions.<role>.batch_size`; out-of-memory halves them and an item that fails twice is recorded
with its error (`batching.run_in_batches`). Empty or garbage captions and answers that do not normalise are
flagged, not dropped.

**Shards and caching.** Shard i of n takes the i-th contiguous range of the items sorted by id (all of them by
default) and writes only its own files; `merge_captions` (the one writer) then builds the manifest. Each role keeps
a journal per shard (`state/captions/<role>/shard-i-of-n.jsonl`; the old `<role>.jsonl` is read too) of one record
per item with a *key*: the
sha256 of what the output depends on — the input file's sha256 (or, for the object phrase, the prompt with both
captions), the backend, model id and resolved revision, dtype, device and the role's settings except its batch
size. A rerun reuses every record whose key still matches and asks the model only for the rest (none: the model is
not even loaded); a record of any shard layout counts. Failed items are retried on every run. Input hashes are
remembered with the file's size and mtime (`state/captions/input-hashes/shard-i-of-n.json`), so a rerun over
unchanged files does not read them again.

Greedy outputs in float32 do not depend on the batch size (tested on the tiny models), so it is not part of the key;
in bfloat16/float16 rounding can differ between batch shapes and flip a near-tied token.

**Manifest.** `captions` (one row per item, sorted by item_id), with model ids, revisions and backends per role,
the prompt version, the raw LLM answer, flags and errors. Paths are relative to the work directory.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from is4.config import BuildConfig, CaptionsConfig, ModelRef
from is4.manifests.atomic import atomic_write_bytes
from is4.manifests.checksum import json_sha256, sha256_file
from is4.manifests.errors import FatalError
from is4.manifests.io import is_blank, manifest_path, read_manifest, write_manifest
from is4.manifests.journal import Journal
from is4.manifests.lock import manifest_lock
from is4.manifests.schema import CAPTIONS, CLIPS, IMAGES, INSTANCES
from is4.pipeline.captions.object_phrase import PROMPT_VERSION, render_object_prompt
from is4.pipeline.common.batching import release_device_memory, run_in_batches
from is4.pipeline.common.llm import normalise_phrase
from is4.pipeline.common.models import ModelError, resolve_model
from is4.pipeline.shard import JOURNAL_GLOB, Shard
from is4.pipeline.stage import ProgressFn

JOURNAL_DIR = "state/captions"
ROLES = ("image_caption", "audio_caption", "object_phrase")
MODEL_ROLES = {"image_caption": "image_captioner", "audio_caption": "audio_captioner", "object_phrase": "object_phrase"}
CONFIG_SECTIONS = {"image_caption": "image", "audio_caption": "audio", "object_phrase": "object_phrase"}
_REPEATED_CHAR = re.compile(r"(.)\1{9,}")


class CaptionError(FatalError, ValueError):
    """The caption stage cannot run (no items source, ids that collide, an unusable manifest)."""


@dataclass(frozen=True)
class CaptionItem:
    """One thing to caption: a clip or an IS4 instance, with its image and audio (paths relative to WORK)."""

    item_id: str
    source: str  # "clip" | "instance"
    image_path: str | None
    audio_path: str | None


# --- items -------------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return None if is_blank(value) else str(value)


def collect_items(workdir: Path, cfg: CaptionsConfig) -> list[CaptionItem]:
    """The items `cfg.sources` names, sorted by id; an id shared by a clip and an instance raises CaptionError."""
    items: dict[str, CaptionItem] = {}

    def add(item: CaptionItem) -> None:
        if item.item_id in items:
            raise CaptionError(f"item id {item.item_id!r} is both a clip and an instance; captions are keyed by id")
        items[item.item_id] = item

    if "clips" in cfg.sources:
        clips = read_manifest(workdir, CLIPS)
        usable = clips[(clips["status"] == "ok") & clips["split"].isin(cfg.splits)]
        for row in usable.itertuples(index=False):
            add(CaptionItem(row.clip_id, "clip", _text(row.frame_path), _text(row.audio_path)))
    if "instances" in cfg.sources:
        instances = read_manifest(workdir, INSTANCES)
        if "image_path" not in instances.columns:  # older instance manifests: the image comes from `images`
            images = read_manifest(workdir, IMAGES)[["image_id", "image_path"]]
            instances = instances.merge(images, on="image_id", how="left")
        for row in instances.itertuples(index=False):
            add(CaptionItem(row.instance_id, "instance", _text(row.image_path), _text(row.audio_path)))
    return [items[k] for k in sorted(items)]


# --- keys --------------------------------------------------------------------------------------------------------


class InputHashes:
    """sha256 of input files, remembered with their size and mtime (a file that did not change is not read again)."""

    def __init__(self, workdir: Path, known: dict[str, dict[str, Any]]) -> None:
        self.workdir = workdir
        self.known = known  # relative path -> {"size", "mtime_ns", "sha256"}

    def __call__(self, relative: str) -> dict[str, Any]:
        """{"size", "mtime_ns", "sha256"} of a file under WORK; OSError when it cannot be read."""
        stat = os.stat(self.workdir / relative)
        cached = self.known.get(relative)
        if cached and cached["size"] == stat.st_size and cached["mtime_ns"] == stat.st_mtime_ns:
            return cached
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(self.workdir / relative)}
        self.known[relative] = entry
        return entry


def model_identity(role: str, ref: ModelRef | None, workdir: Path, cfg: CaptionsConfig) -> dict[str, Any]:
    """What identifies a role's model without loading it: backend, id, resolved revision, dtype, device, settings."""
    if ref is None:
        raise ModelError(f"models.{MODEL_ROLES[role]} is not configured (the caption stage needs it)")
    section = getattr(cfg, CONFIG_SECTIONS[role])
    if role == "image_caption":
        backend = "blip2"
    elif role == "audio_caption":
        backend = "gama" if cfg.audio.backend == "gama" else "qwen2-audio"
    else:
        backend = cfg.object_phrase.backend
    settings = section.model_dump(mode="json", exclude={"batch_size", "backend"})
    if backend == "gama":
        from is4.pipeline.captions.audio import gama_checkpoint_revision

        revision = gama_checkpoint_revision(ref)
    else:
        settings.pop("gama", None)
        revision = resolve_model(ref, workdir, MODEL_ROLES[role]).revision
    return {
        "backend": backend,
        "model_id": ref.model_id,
        "revision": revision,
        "dtype": ref.dtype,
        "device": ref.device,
        "settings": settings,
    }


def text_flag(text: str | None) -> str | None:
    """'empty' for a blank caption, 'garbage' for one that is not text (no letters, mostly symbols, one word or one
    character over and over), else None."""
    if text is None or not text.strip():
        return "empty"
    letters = sum(c.isalpha() for c in text)
    words = text.lower().split()
    if letters == 0 or letters < 0.5 * len(text.replace(" ", "")) or _REPEATED_CHAR.search(text):
        return "garbage"
    if len(words) >= 4 and max(words.count(w) for w in set(words)) > len(words) / 2:
        return "garbage"
    return None


# --- one role ----------------------------------------------------------------------------------------------------


@dataclass
class RoleResult:
    """Per-item records of one role (from the cache or new) and what it took."""

    records: dict[str, dict[str, Any]]
    captioned: int = 0
    cached: int = 0
    distinct_inputs: int = 0  # distinct inputs sent to the model (items sharing an input are asked once)
    failed: int = 0
    batch_size: int | None = None
    halvings: int = 0


def run_role(
    role: str,
    work_items: dict[str, tuple[str, Any]],
    identity: dict[str, Any],
    load: Callable[[], Any],
    batch_size: int,
    journal: Journal,
    *,
    known: dict[str, list[dict[str, Any]]] | None = None,
    progress: ProgressFn | None = None,
) -> RoleResult:
    """Caption `work_items` (item_id -> (key, model input)) with the model `load` returns, reusing cached records
    (`known`: every journal's records per item, else `journal`'s own); new records go to `journal`."""
    if known is None:
        known = {item_id: [record] for item_id, record in journal.load().items()}
    result = RoleResult(records={})
    todo: list[tuple[str, str, Any]] = []
    for item_id, (key, model_input) in work_items.items():
        record = pick_record(known.get(item_id, ()), key)
        if record is not None and record.get("error") is None:
            result.records[item_id] = record
            result.cached += 1
        else:
            todo.append((item_id, key, model_input))
    if not todo:
        return result
    # Items with the same key (an instance reusing a clip's audio, two instances of one image) are asked once.
    unique: dict[str, Any] = {}
    for _, key, model_input in todo:
        unique.setdefault(key, model_input)
    model = load()
    try:

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total, role)

        outcome = run_in_batches(list(unique.values()), model.caption, batch_size, progress=report)
    finally:
        close = getattr(model, "close", None)  # a backend running in its own process (GAMA) stops it
        if close is not None:
            close()
        del model
        gc.collect()
        release_device_memory()
    result.batch_size, result.halvings = outcome.batch_size, outcome.halvings
    answers = dict(zip(unique, zip(outcome.outputs, outcome.errors, strict=True), strict=True))
    for item_id, key, _ in todo:
        text, error = answers[key]
        record = {"item_id": item_id, "key": key, "text": text, "error": error, **_model_fields(identity)}
        journal.append(record)
        result.records[item_id] = record
        if error is None:
            result.captioned += 1
        else:
            result.failed += 1
    result.distinct_inputs = len(unique)
    return result


def pick_record(candidates: Any, key: str) -> dict[str, Any] | None:
    """Of an item's records (from any journal), one with this key: a caption before an error, else None."""
    matching = [r for r in candidates if r.get("key") == key]
    return next((r for r in matching if r.get("error") is None), matching[-1] if matching else None)


def role_journals(work: Path, role: str) -> list[Path]:
    """Every journal of a role: the single-file layout (`<role>.jsonl`) first, then the shards' in name order."""
    legacy = work / JOURNAL_DIR / f"{role}.jsonl"
    return [legacy] * legacy.exists() + sorted((work / JOURNAL_DIR / role).glob(f"{JOURNAL_GLOB}.jsonl"))


def known_records(work: Path, role: str) -> dict[str, list[dict[str, Any]]]:
    """item_id -> its latest record in each journal of `role` (journal order)."""
    known: dict[str, list[dict[str, Any]]] = {}
    for path in role_journals(work, role):
        for item_id, record in Journal(path, "item_id").load().items():
            known.setdefault(item_id, []).append(record)
    return known


def _model_fields(identity: dict[str, Any]) -> dict[str, Any]:
    return {"backend": identity["backend"], "model_id": identity["model_id"], "revision": identity["revision"]}


# --- the stage ---------------------------------------------------------------------------------------------------


def _loader(role: str, ref: ModelRef, workdir: Path, cfg: CaptionsConfig) -> Callable[[], Any]:
    if role == "image_caption":
        from is4.pipeline.captions.image import Blip2Captioner

        return lambda: Blip2Captioner.load(
            ref, workdir, prompt=cfg.image.prompt, max_new_tokens=cfg.image.max_new_tokens
        )
    if role == "audio_caption":
        from is4.pipeline.captions.audio import load_audio_captioner

        return lambda: load_audio_captioner(ref, workdir, cfg.audio)
    from is4.pipeline.captions.object_phrase import load_phraser

    return lambda: load_phraser(ref, workdir, cfg.object_phrase)


def _media_items(
    role: str,
    column: str,
    items: list[CaptionItem],
    hashes: InputHashes,
    identity: dict[str, Any],
    errors: dict[str, list[str]],
) -> dict[str, tuple[str, Any]]:
    """item_id -> (key, input file) for a captioning role; unreadable inputs are recorded in `errors`."""
    work_items: dict[str, tuple[str, Any]] = {}
    for item in items:
        relative = getattr(item, column)
        try:
            if relative is None:
                raise FileNotFoundError(f"the item has no {column}")
            digest = hashes(relative)["sha256"]
        except OSError as exc:
            errors[item.item_id].append(f"{role}: cannot read {relative}: {exc.strerror or exc}")
            continue
        work_items[item.item_id] = (json_sha256({"input": digest, **identity}), hashes.workdir / relative)
    return work_items


def _phrase_items(
    items: list[CaptionItem], results: dict[str, RoleResult], identity: dict[str, Any]
) -> dict[str, tuple[str, Any]]:
    """item_id -> (key, (image caption, audio caption)) for the items that have both captions."""
    phrase_items: dict[str, tuple[str, Any]] = {}
    for item in items:
        image = results["image_caption"].records.get(item.item_id, {}).get("text")
        audio = results["audio_caption"].records.get(item.item_id, {}).get("text")
        if not image or not audio:
            continue  # nothing to ask about: the missing caption's error is recorded
        message = render_object_prompt(image, audio)
        phrase_items[item.item_id] = (
            json_sha256({"prompt_version": PROMPT_VERSION, "message": message, **identity}),
            (image, audio),
        )
    return phrase_items


def _identities(work: Path, cfg: BuildConfig) -> tuple[dict[str, ModelRef | None], dict[str, dict[str, Any]]]:
    refs = {role: getattr(cfg.models, MODEL_ROLES[role]) for role in ROLES}
    return refs, {role: model_identity(role, refs[role], work, cfg.captions) for role in ROLES}


def run_captions(
    workdir: str | Path,
    cfg: BuildConfig,
    *,
    shard: Shard = Shard(),
    merge: bool = True,
    progress: ProgressFn | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Caption shard i of n of the items (cached where nothing changed; all items by default), journaling to the
    shard's own files, then (unless `merge=False`: the flow merges once after all shards) write the manifest."""
    work = Path(workdir)
    ccfg = cfg.captions
    refs, identities = _identities(work, cfg)
    items = shard.slice(collect_items(work, ccfg))
    journals = {role: Journal(work / JOURNAL_DIR / role / shard.journal_name(), "item_id") for role in ROLES}
    hashes = InputHashes(work, load_hash_cache(work))
    errors: dict[str, list[str]] = {item.item_id: [] for item in items}
    results: dict[str, RoleResult] = {}
    batch_sizes = {role: getattr(ccfg, CONFIG_SECTIONS[role]).batch_size for role in ROLES}

    for role, column in (("image_caption", "image_path"), ("audio_caption", "audio_path")):
        work_items = _media_items(role, column, items, hashes, identities[role], errors)
        results[role] = run_role(
            role,
            work_items,
            identities[role],
            _loader(role, refs[role], work, ccfg),
            batch_sizes[role],
            journals[role],
            known=known_records(work, role),
            progress=progress,
        )
    _save_hash_cache(work, shard, hashes.known)

    results["object_phrase"] = run_role(
        "object_phrase",
        _phrase_items(items, results, identities["object_phrase"]),
        identities["object_phrase"],
        _loader("object_phrase", refs["object_phrase"], work, ccfg),
        batch_sizes["object_phrase"],
        journals["object_phrase"],
        known=known_records(work, "object_phrase"),
        progress=progress,
    )
    summary = {"shard": str(shard), "items": len(items), **_role_counts(results)}
    if merge:
        summary |= merge_captions(work, cfg, provenance)
    return summary


def merge_captions(
    workdir: str | Path, cfg: BuildConfig, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The one writer of the `captions` manifest: every item's record under its current key, from any shard's
    journal (a caption before an error); items without one have empty captions. A summary of the manifest."""
    work = Path(workdir)
    _, identities = _identities(work, cfg)
    items = collect_items(work, cfg.captions)
    hashes = InputHashes(work, load_hash_cache(work))
    errors: dict[str, list[str]] = {item.item_id: [] for item in items}
    results: dict[str, RoleResult] = {}

    def chosen(role: str, work_items: dict[str, tuple[str, Any]]) -> RoleResult:
        known = known_records(work, role)
        picked = {item_id: pick_record(known.get(item_id, ()), key) for item_id, (key, _) in work_items.items()}
        return RoleResult(records={k: v for k, v in picked.items() if v is not None})

    for role, column in (("image_caption", "image_path"), ("audio_caption", "audio_path")):
        results[role] = chosen(role, _media_items(role, column, items, hashes, identities[role], errors))
    results["object_phrase"] = chosen("object_phrase", _phrase_items(items, results, identities["object_phrase"]))

    frame = _manifest_frame(items, results, errors)
    facts = {"prompt_version": PROMPT_VERSION, "model_identities": identities}
    with manifest_lock(work, CAPTIONS.name):
        write_manifest(work, CAPTIONS, frame, {**(provenance or {}), **facts})
    return {**_manifest_summary(items, frame), "manifest": str(manifest_path(work, CAPTIONS.name))}


def _manifest_frame(
    items: list[CaptionItem], results: dict[str, RoleResult], errors: dict[str, list[str]]
) -> pd.DataFrame:
    rows = []
    for item in items:
        row: dict[str, Any] = {
            "item_id": item.item_id,
            "source": item.source,
            "image_path": item.image_path,
            "audio_path": item.audio_path,
            "prompt_version": PROMPT_VERSION,
        }
        flags = []
        item_errors = list(errors[item.item_id])
        for role in ROLES:
            record = results[role].records.get(item.item_id)
            text = record.get("text") if record else None
            if record is not None and record.get("error"):
                item_errors.append(f"{role}: {record['error']}")
            row[f"{role}_backend"] = record["backend"] if record else None
            row[f"{role}_model"] = record["model_id"] if record else None
            row[f"{role}_revision"] = record["revision"] if record else None
            if role == "object_phrase":
                row["object_phrase_raw"] = text
                row["object_phrase"] = normalise_phrase(text) if text is not None else None
                if text is not None and row["object_phrase"] is None:
                    flags.append("object_phrase:unparsed")
                elif row["object_phrase"] is not None and text_flag(row["object_phrase"]) == "garbage":
                    flags.append("object_phrase:garbage")
            else:
                row[role] = text
                flag = text_flag(text) if record is not None and not record.get("error") else None
                if flag:
                    flags.append(f"{role}:{flag}")
        row["flags"] = ",".join(flags) or None
        row["error"] = "; ".join(item_errors) or None
        rows.append(row)
    columns = [f.name for f in CAPTIONS.columns]
    return pd.DataFrame(rows, columns=columns)


def _role_counts(results: dict[str, RoleResult]) -> dict[str, Any]:
    return {
        role: {
            "captioned": result.captioned,
            "cached": result.cached,
            "failed": result.failed,
            "distinct_inputs": result.distinct_inputs,
            "batch_size": result.batch_size,
            "halvings": result.halvings,
        }
        for role, result in results.items()
    }


def _manifest_summary(items: list[CaptionItem], frame: pd.DataFrame) -> dict[str, Any]:
    summary: dict[str, Any] = {"items": len(items), "with_object_phrase": int(frame["object_phrase"].notna().sum())}
    flags = frame["flags"].dropna().str.split(",").explode().value_counts()
    summary["flags"] = {str(k): int(v) for k, v in sorted(flags.items())}
    summary["errors"] = int(frame["error"].notna().sum())
    return summary


_HASH_CACHE = "input-hashes.json"  # the single-file layout, read as one more cache
_HASH_DIR = "input-hashes"


def load_hash_cache(work: Path) -> dict[str, dict[str, Any]]:
    """The remembered input hashes of every shard (entries are checked against size + mtime before use)."""
    known: dict[str, dict[str, Any]] = {}
    for path in [
        work / JOURNAL_DIR / _HASH_CACHE,
        *sorted((work / JOURNAL_DIR / _HASH_DIR).glob(f"{JOURNAL_GLOB}.json")),
    ]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            known.update(data)
    return known


def _save_hash_cache(work: Path, shard: Shard, known: dict[str, dict[str, Any]]) -> None:
    # One file per shard: concurrent shards never rewrite each other's file.
    path = work / JOURNAL_DIR / _HASH_DIR / shard.journal_name(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(known, sort_keys=True).encode())


def caption_stage(
    work: Path,
    cfg: BuildConfig,
    provenance: dict[str, Any],
    *,
    progress: ProgressFn | None = None,
    shard: Shard = Shard(),
    merge: bool = True,
) -> dict[str, Any]:
    """Image captions, audio captions and the sounding object's phrase for training clips (and IS4 instances)."""
    return run_captions(work, cfg, shard=shard, merge=merge, progress=progress, provenance=provenance)


def merge_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """The captions manifest after every shard ran (`merge=False`), with the shards' counts summed per role."""
    totals = {
        role: {
            k: sum(s[role][k] for s in shards) for k in ("captioned", "cached", "failed", "distinct_inputs", "halvings")
        }
        for role in ROLES
    }
    return {**totals, **merge_captions(work, cfg, provenance)}
