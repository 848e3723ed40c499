"""The categories stage: each VGG-SS class label → its sounding object, a noun phrase Stable Diffusion can draw.

`playing cello` → `cello`, `dog barking` → `dog`, `playing violin, fiddle` → `violin`. Three sources, later ones
winning:

1. **Rules** (`rule_object`): ordered rewrites of the label (`RULES`), then the last word made singular. A label
   they cannot reduce to a concrete noun (`skidding`, `singing bowl`) is left unsettled.
2. **LLM proposals** (optional): the unsettled labels go to `propose` in one call; an answer that is not 1–3
   words of letters is ignored with a note.
3. **Reviewed overrides** (`configs/category_overrides.yaml`, `load_overrides`): the last word on every field.

Then, per object:

- **category id**: `manifests.ids.category_id(object)` unless an override gives the object an id; an override's id
  follows its object to every label with that object (`female speech, …` and `female singing` → `female`).
  Labels sharing an id are a merge; one id must name one object.
- **instrument**: true for a `playing …` label of the VGGSound `music` group (so not `playing table tennis`, a
  sports label, nor `orchestra`, `church bell ringing`, `wind chime`, which one does not "play a …"). Labels
  sharing an id must agree, so a label merged into an instrument needs `instrument: true` in its override.
- **depictable**: false where no object is left or the object is an ambient, shapeless source (`AMBIENT`: wind,
  water, …); the note says why. Non-depictable rows have no category id.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from is4.classes import vggsound_classes, vggss_labels
from is4.config import BuildConfig, CategoriesConfig, read_yaml
from is4.manifests.atomic import atomic_write_json
from is4.manifests.errors import FatalError
from is4.manifests.ids import CATEGORY_ID_RE, category_id
from is4.manifests.io import write_manifest
from is4.manifests.schema import CATEGORIES
from is4.pipeline.stage import ProgressFn

REPORT_PATH = Path("reports") / "categories.json"
COLUMNS = ("label", "object", "category_id", "instrument", "depictable", "source", "note")
# An object: 1–3 lower-case words of letters (what fills "a photo of a {c1} and {c2}").
PHRASE_RE = re.compile(r"[a-z]+(?: [a-z]+){0,2}")

Proposer = Callable[[list[str]], Mapping[str, str]]


class CategoryError(FatalError, ValueError):
    """An overrides file, a label list or the derived categories break the rules of this stage."""


@dataclass(frozen=True)
class CategoryOverride:
    """Reviewed values for one label; a field left None keeps what the rules (or the LLM) gave."""

    object: str | None = None
    category_id: str | None = None
    instrument: bool | None = None
    depictable: bool | None = None
    note: str | None = None


_FIELD_TYPES: dict[str, type] = {"object": str, "category_id": str, "instrument": bool, "depictable": bool, "note": str}

# ---------------------------------------------------------------------------------------------------------------
# Rules

# Verbs and nouns that describe the sound (or the action making it); the object is what comes before the first one.
SOUND_WORDS = (
    "accelerating",
    "acceleration",
    "baying",
    "banging",
    "barking",
    "beeping",
    "beeps",
    "bellowing",
    "bleating",
    "bounce",
    "bow-wow",
    "braying",
    "bugling",
    "burbling",
    "buzzing",
    "calling",
    "caterwauling",
    "cawing",
    "chatter",
    "chirping",
    "chirrup",
    "cleaning",
    "clicking",
    "clip-clop",
    "clucking",
    "cooing",
    "crackling",
    "croaking",
    "crowing",
    "crying",
    "digging",
    "drying",
    "explosion",
    "flapping",
    "flushing",
    "flyby",
    "gobbling",
    "grinding",
    "growling",
    "hissing",
    "honking",
    "hooting",
    "horning",
    "howling",
    "idling",
    "igniting",
    "impact",
    "knocking",
    "launch",
    "laughter",
    "lowing",
    "meowing",
    "mooing",
    "neighing",
    "noise",
    "oinking",
    "pant-hooting",
    "passing",
    "pecking",
    "purring",
    "quacking",
    "rattling",
    "revving",
    "ringing",
    "roaring",
    "running",
    "screaming",
    "shaving",
    "shooting",
    "shouting",
    "singing",
    "siren",
    "slamming",
    "sound",
    "sounds",
    "speaking",
    "speech",
    "spinning",
    "squawking",
    "squealing",
    "squeaking",
    "starting",
    "talking",
    "trumpeting",
    "tweeting",
    "whimpering",
    "whistling",
)
# Verbs that open a label and are followed by the object (`driving buses`, `typing on typewriter`).
LEADING_VERBS = (
    "driving",
    "lighting",
    "opening or closing",
    "popping",
    "sharpen",
    "splashing",
    "squishing",
    "tapping",
    "typing on",
    "using",
)
# Parts named instead of the whole that makes the sound (`car engine` → `car`).
PARTS = ("engine", "wheel", "wheels", "wing", "wings")


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in words)


# Ordered rewrites of the lower-cased label: (name, pattern, replacement). The note names each one that fired.
RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("drop parenthesis", re.compile(r" ?\([^)]*\)"), ""),
    ("first alternative", re.compile(r",.*"), ""),
    ("drop 'playing'", re.compile(r"^playing "), ""),
    ("people → person", re.compile(r"^people(?: .*)?$"), "person"),
    ("drop leading verb", re.compile(rf"^(?:{_alternation(LEADING_VERBS)}) "), ""),
    ("cut at sound word", re.compile(rf"(?:^| )(?:{_alternation(SOUND_WORDS)})(?: .*)?$"), ""),
    ("part → whole", re.compile(rf"^(.+) (?:{_alternation(PARTS)})$"), r"\1"),
)

IRREGULAR_PLURALS = {
    "buses": "bus",
    "children": "child",
    "geese": "goose",
    "men": "man",
    "mice": "mouse",
    "people": "person",
    "women": "woman",
}
PLURAL_ONLY = frozenset({"bagpipes", "scissors", "timbales"})
# Ordered suffix rewrites for simple plurals; `bass`, `glass`, `bus`, `tennis` are left as they are.
SINGULAR_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"([^aeiou])ies$"), r"\1y"),
    (re.compile(r"(ch|sh|ss|x|z)es$"), r"\1"),
    (re.compile(r"(?<![isu])s$"), ""),
)
# -ing words that name or qualify a thing (`sewing machine`); any other -ing word names an activity.
ING_NOUNS = frozenset({"building", "ceiling", "king", "ring", "sewing", "spring", "string", "swing", "washing", "wing"})
# Sources that are everywhere or shapeless: nothing to draw beside another object.
AMBIENT = frozenset({"air", "hail", "ocean", "rain", "sea", "thunder", "water", "wind"})


def singular(phrase: str) -> str:
    """The phrase with its last word made singular (`lions` → `lion`, `buses` → `bus`, `double bass` kept)."""
    *head, last = phrase.split(" ")
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last not in PLURAL_ONLY:
        for pattern, replacement in SINGULAR_RULES:
            if pattern.search(last):
                last = pattern.sub(replacement, last)
                break
    return " ".join([*head, last])


def noun_problem(phrase: str) -> str | None:
    """Why `phrase` is not a usable object (1–3 words of letters, no activity), or None when it is."""
    if not phrase:
        return "no words left after removing the sound"
    activity = [w for w in phrase.split(" ") if w.endswith("ing") and w not in ING_NOUNS]
    if activity:
        return f"{activity[0]!r} names an activity, not an object"
    if not PHRASE_RE.fullmatch(phrase):
        return f"{phrase!r} is not 1-3 words of letters"
    return None


def rule_object(label: str) -> tuple[str | None, str]:
    """(object, note naming the rules that fired), or (None, note saying why) when the rules cannot settle it."""
    text, fired = label.strip().lower(), []
    for name, pattern, replacement in RULES:
        rewritten = pattern.sub(replacement, text).strip()
        if rewritten != text:
            text = rewritten
            fired.append(name)
    if text and singular(text) != text:
        text = singular(text)
        fired.append("singular")
    note = "rules: " + (", ".join(fired) if fired else "label as is")
    problem = noun_problem(text)
    return (None, f"{note}; {problem}") if problem else (text, note)


# ---------------------------------------------------------------------------------------------------------------
# Overrides


@lru_cache(maxsize=1)
def _groups() -> dict[str, str]:
    """VGGSound label → group (animals, music, …)."""
    return {row["label"]: row["group"] for row in vggsound_classes()}


def _check_override(label: object, override: CategoryOverride, where: str) -> None:
    """Raise CategoryError (naming `where`, the label and the field) unless the override is well formed."""
    if not isinstance(label, str) or label not in _groups():
        raise CategoryError(f"{where}: {label!r} is not a VGGSound label")
    for name, kind in _FIELD_TYPES.items():
        value = getattr(override, name)
        if value is not None and not isinstance(value, kind):
            raise CategoryError(
                f"{where}: {label!r}: {name} must be a {kind.__name__}, not {type(value).__name__} {value!r}"
            )
    if override.object is not None and not PHRASE_RE.fullmatch(override.object):
        raise CategoryError(f"{where}: {label!r}: object {override.object!r} is not 1-3 lower-case words of letters")
    if override.category_id is not None:
        if not CATEGORY_ID_RE.fullmatch(override.category_id):
            raise CategoryError(f"{where}: {label!r}: category_id {override.category_id!r} is not [a-z0-9]+")
        if override.object is None:
            raise CategoryError(f"{where}: {label!r}: category_id needs an object (the id follows the object)")
    if (override.object, override.category_id, override.instrument, override.depictable) == (None,) * 4:
        raise CategoryError(f"{where}: {label!r}: sets none of object, category_id, instrument, depictable")


def load_overrides(path: str | Path) -> dict[str, CategoryOverride]:
    """Read a reviewed overrides file: `label: {object, category_id, instrument, depictable, note}` per label."""
    path = Path(path)
    data = read_yaml(path, "category overrides", CategoryError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CategoryError(f"{path}: the top level must be a mapping of labels, not {type(data).__name__}")
    overrides = {}
    for label, value in data.items():
        if not isinstance(value, dict):
            raise CategoryError(f"{path}: {label!r}: expected a mapping of {', '.join(_FIELD_TYPES)}, got {value!r}")
        unknown = sorted(str(key) for key in value if key not in _FIELD_TYPES)
        if unknown:
            raise CategoryError(
                f"{path}: {label!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELD_TYPES)}"
            )
        override = CategoryOverride(**value)
        _check_override(label, override, str(path))
        overrides[label] = override
    return overrides


# ---------------------------------------------------------------------------------------------------------------
# Deriving the table


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _proposal_object(proposal: object) -> str | None:
    """The proposal as an object (whitespace collapsed, lower case), or None unless it is 1–3 words of letters."""
    if not isinstance(proposal, str):
        return None
    phrase = " ".join(proposal.split()).lower()
    return phrase if PHRASE_RE.fullmatch(phrase) else None


def _take_proposals(rows: dict[str, dict[str, Any]], asked: list[str], answer: Mapping[str, str]) -> None:
    """Use each valid proposal as the label's object (source llm); note the missing and the rejected ones."""
    if not isinstance(answer, Mapping):
        raise CategoryError(f"the object proposer returned {type(answer).__name__}, not a mapping of label → object")
    for label in asked:
        row, proposal = rows[label], answer.get(label)
        phrase = _proposal_object(proposal)
        if phrase is not None:
            row.update(object=phrase, source="llm", note=f"llm proposal {proposal!r}; {row['note']}")
        elif proposal is None:
            row["note"] += "; the llm proposed nothing"
        else:
            row["note"] += f"; llm proposal {_clip(repr(proposal))} rejected: not 1-3 words of letters"


def _apply_override(row: dict[str, Any], override: CategoryOverride) -> None:
    """Take the override's object (if any) and note what it replaced."""
    before = f"{row['source']} gave {row['object']!r}" if row["object"] else row["note"]
    if override.object is not None:
        row["object"] = override.object
    row.update(source="override", note=f"override: {override.note or 'reviewed'} ({before})")


def _ids_by_object(overrides: Mapping[str, CategoryOverride]) -> dict[str, str]:
    """object → category id, from the overrides that give one; two ids for one object is an error."""
    ids: dict[str, str] = {}
    for label, override in sorted(overrides.items()):
        if override.category_id is None:
            continue
        if ids.setdefault(override.object, override.category_id) != override.category_id:
            raise CategoryError(
                f"overrides give object {override.object!r} two category ids: {ids[override.object]!r} and "
                f"{override.category_id!r} (at {label!r})"
            )
    return ids


def _plays_an_instrument(label: str) -> bool:
    """A `playing …` label of the music group (`playing table tennis` is sports)."""
    return label.startswith("playing ") and _groups()[label] == "music"


def _finish(row: dict[str, Any], override: CategoryOverride | None, ids: dict[str, str]) -> None:
    """Set instrument, depictable and category id (an override's explicit values win)."""
    obj = row["object"]
    depictable, why = True, None
    if obj is None:
        depictable, why = False, "no object"
    elif obj in AMBIENT:
        depictable, why = False, f"ambient sound: {obj!r} is not an object to draw"
    instrument = obj is not None and _plays_an_instrument(row["label"])
    if override is not None:
        depictable = depictable if override.depictable is None else override.depictable
        instrument = instrument if override.instrument is None else override.instrument
        why = why if override.depictable is None else "not depictable by override"
    if depictable and obj is None:
        raise CategoryError(f"{row['label']!r}: the override makes it depictable but nothing names its object")
    if not depictable and why not in row["note"]:
        row["note"] += f"; {why}"
    row.update(
        depictable=depictable,
        instrument=instrument,
        category_id=(ids.get(obj) or category_id(obj)) if depictable else None,
    )


def _check_merges(frame: pd.DataFrame) -> None:
    """Depictable labels that share a category id must name one object and agree on `instrument`."""
    shown = frame[frame["depictable"]]
    for cid, group in shown.groupby("category_id"):
        for column in ("object", "instrument"):
            if group[column].nunique() > 1:
                values = ", ".join(f"{label!r}: {value!r}" for label, value in zip(group["label"], group[column]))
                raise CategoryError(f"category id {cid!r}: its labels disagree on {column} ({values})")


def derive_categories(
    labels: Sequence[str],
    overrides: Mapping[str, CategoryOverride] | None = None,
    propose: Proposer | None = None,
) -> pd.DataFrame:
    """One row per label (sorted): label, object, category_id, instrument, depictable, source, note."""
    overrides = dict(overrides or {})
    for label, override in overrides.items():
        _check_override(label, override, "overrides")
    unknown = sorted(set(labels) - set(_groups()))
    if unknown:
        raise CategoryError(f"not VGGSound labels: {', '.join(map(repr, unknown))}")
    rows: dict[str, dict[str, Any]] = {}
    for label in sorted(set(labels)):
        obj, note = rule_object(label)
        rows[label] = {"label": label, "object": obj, "source": "rule", "note": note}
    unsettled = [label for label, row in rows.items() if row["object"] is None]
    if propose is not None and unsettled:
        _take_proposals(rows, unsettled, propose(list(unsettled)))
    for label in rows.keys() & overrides.keys():
        _apply_override(rows[label], overrides[label])
    ids = _ids_by_object(overrides)
    for label, row in rows.items():
        _finish(row, overrides.get(label), ids)
    frame = pd.DataFrame(list(rows.values()), columns=list(COLUMNS))
    _check_merges(frame)
    return frame


def category_report(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts, merges (ids with more than one label), dropped labels with their note, rows per source."""
    depictable = frame["depictable"].astype(bool)
    shown = frame[depictable]
    merged = {str(cid): sorted(group["label"]) for cid, group in shown.groupby("category_id") if len(group) > 1}
    return {
        "labels": len(frame),
        "objects": int(shown["category_id"].nunique()),
        "merged": merged,
        "dropped": {str(r.label): str(r.note) for r in frame[~depictable].itertuples(index=False)},
        "by_source": {str(k): int(v) for k, v in sorted(Counter(frame["source"]).items())},
    }


def run_categories(
    workdir: str | Path,
    cfg: CategoriesConfig,
    *,
    labels: Sequence[str] | None = None,
    propose: Proposer | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the categories manifest and `reports/categories.json`; return the report and the manifest path.

    `labels` defaults to the 221 VGG-SS labels. `propose` is the object-phrase model's callable; a config with
    `llm_proposals` on needs one.
    """
    if cfg.llm_proposals and propose is None:
        raise CategoryError("categories.llm_proposals is on but no object proposer (models.object_phrase) was given")
    overrides = load_overrides(cfg.overrides) if cfg.overrides is not None else {}
    frame = derive_categories(vggss_labels() if labels is None else labels, overrides, propose)
    facts = {"labels": len(frame), "llm_proposals": propose is not None}
    path = write_manifest(workdir, CATEGORIES, frame, {**(provenance or {}), **facts})
    report = category_report(frame)
    atomic_write_json(Path(workdir) / REPORT_PATH, report)
    return {**report, "manifest": str(path)}


def categories_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Map the VGG-SS labels to objects (rules, LLM proposals when configured, reviewed overrides)."""
    propose = None
    if cfg.categories.llm_proposals:
        from is4.pipeline.common.llm import ChatLM, object_name_proposer
        from is4.pipeline.common.models import ModelError

        if cfg.models.object_phrase is None:
            raise ModelError("categories.llm_proposals needs models.object_phrase")
        propose = object_name_proposer(ChatLM.load(cfg.models.object_phrase, work))
    return run_categories(work, cfg.categories, propose=propose, provenance=provenance)
