"""The prompts stage: unordered pairs of depictable categories × templates × styles × images per prompt.

Rules (the IS4 paper's templates; DESIGN §3 `prompts` table):

- **Categories.** Only depictable rows of the categories manifest count. Several labels may share one category id;
  each id gets one object noun and one instrument flag, both from its first label in sorted order. Nouns are used
  as written there (`alarm clock`); the templates' article stays verbatim (`a photo of a alarm clock and …`).
  `cfg.categories` restricts the ids; naming an unknown or non-depictable id is a `PromptError`, as is having
  fewer than two ids to pair.
- **Pairs.** A pair is named by its sorted ids, `category_a < category_b`. With `cfg.max_pairs`, the pairs with
  the smallest seeded rank of their two ids are kept, so the sample depends on the seed and the ids only, never on
  row order.
- **Templates.** A symmetric template gets {c1} = a and {c2} = b. A template also listed in
  `cfg.instrument_templates` needs an instrument in {c2}: (c1, c2) = (a, b) if b is an instrument, else (b, a) if a
  is one, else the template is skipped for that pair. So a pair of two instruments still gets one prompt per
  (template, style, k), with b in {c2}. With `cfg.players`, {c1} must also be one of those categories (a person
  plays the instrument, not an alarm clock). Every instrument template must be one of `cfg.templates`.
- **Prompt.** The filled template, ", ", then the style's suffix; the negative prompt comes from the config.
- **Ids and seeds.** `image_id = {category_a}_{category_b}_{n}`, where n counts the prompts the pair emits in the
  order (template in config order, style name sorted, k in range(images_per_prompt)); skipped templates take no
  number. Ids are therefore stable for a fixed config. `seed = derive_seed(global seed, image_id)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from is4.config import BuildConfig, PromptsConfig
from is4.manifests.errors import FatalError
from is4.manifests.ids import CATEGORY_ID_RE, derive_seed, stable_rank
from is4.manifests.io import read_manifest, write_manifest
from is4.manifests.schema import CATEGORIES, PROMPTS
from is4.pipeline.stage import ProgressFn


class PromptError(FatalError, ValueError):
    """The categories and the prompts config do not make a prompt set."""


@dataclass(frozen=True)
class Category:
    """One pairable category: its id, the noun that fills a template and whether it is a musical instrument."""

    category_id: str
    noun: str
    instrument: bool


@dataclass(frozen=True)
class PromptSet:
    """The prompts table with the pairs it was built from."""

    frame: pd.DataFrame
    pairs: list[tuple[str, str]]
    skipped_instrument_pairs: int


def _flag(series: pd.Series) -> pd.Series:
    """A boolean column with missing values read as False."""
    return series.astype("boolean").fillna(False).astype(bool)


def depictable_categories(categories: pd.DataFrame) -> dict[str, Category]:
    """One Category per depictable category id, its noun and instrument flag taken from its first label (sorted)."""
    missing = [c for c in CATEGORIES.column_names if c not in categories.columns]
    if missing:
        raise PromptError(f"categories table lacks column(s) {', '.join(missing)}")
    rows = categories[_flag(categories["depictable"])].assign(instrument=_flag(categories["instrument"]))
    found: dict[str, Category] = {}
    for row in rows.sort_values("label").itertuples(index=False):
        if not isinstance(row.category_id, str) or not CATEGORY_ID_RE.fullmatch(row.category_id):
            raise PromptError(f"label {row.label!r}: category id {row.category_id!r} is not [a-z0-9]+")
        if not isinstance(row.object, str) or not row.object.strip():
            raise PromptError(f"label {row.label!r}: depictable but has no object noun")
        found.setdefault(row.category_id, Category(row.category_id, row.object, bool(row.instrument)))
    return found


def select_categories(available: dict[str, Category], requested: list[str] | None, all_ids: set[str]) -> list[Category]:
    """The categories to pair, sorted by id: all available ones, or those requested (each must be available)."""
    if requested is not None:
        unknown = sorted(set(requested) - set(available))
        if unknown:
            not_depictable = [c for c in unknown if c in all_ids]
            absent = [c for c in unknown if c not in all_ids]
            parts = [f"unknown category id(s): {', '.join(absent)}"] if absent else []
            parts += [f"not depictable: {', '.join(not_depictable)}"] if not_depictable else []
            raise PromptError("prompts.categories: " + "; ".join(parts))
        available = {cid: available[cid] for cid in requested}
    if len(available) < 2:
        raise PromptError(f"need at least 2 depictable categories to pair, got {len(available)}")
    return [available[cid] for cid in sorted(available)]


def choose_pairs(ids: list[str], max_pairs: int | None, seed: int) -> list[tuple[str, str]]:
    """All sorted pairs of distinct ids, or the `max_pairs` of them with the smallest seeded rank."""
    pairs = list(combinations(sorted(ids), 2))
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    ranked = sorted(pairs, key=lambda pair: (stable_rank(seed, "prompts", *pair), pair))
    return sorted(ranked[:max_pairs])


def orient(
    a: Category, b: Category, needs_instrument: bool, players: frozenset[str] | None = None
) -> tuple[Category, Category] | None:
    """(c1, c2) for the pair a < b under one template, or None where an instrument template cannot apply.

    An instrument template needs an instrument in {c2} and, when `players` is given, one of those categories in
    {c1} (so "woman is playing a cello", never "alarm clock is playing a cello").
    """
    if not needs_instrument:
        return a, b
    for c1, c2 in ((a, b), (b, a)):
        if c2.instrument and (players is None or c1.category_id in players):
            return c1, c2
    return None


def pair_prompts(a: Category, b: Category, cfg: PromptsConfig, seed: int) -> list[dict[str, Any]]:
    """The prompt rows of one pair, numbered in (template, sorted style, k) order."""
    rows: list[dict[str, Any]] = []
    players = frozenset(cfg.players) if cfg.players is not None else None
    for template in cfg.templates:
        roles = orient(a, b, template in cfg.instrument_templates, players)
        if roles is None:
            continue
        c1, c2 = roles
        filled = template.format(c1=c1.noun, c2=c2.noun)
        for style in sorted(cfg.styles):
            for _ in range(cfg.images_per_prompt):
                image_id = f"{a.category_id}_{b.category_id}_{len(rows)}"
                rows.append(
                    {
                        "image_id": image_id,
                        "category_a": a.category_id,
                        "category_b": b.category_id,
                        "c1": c1.category_id,
                        "c2": c2.category_id,
                        "template": template,
                        "style": style,
                        "prompt": f"{filled}, {cfg.styles[style]}",
                        "negative_prompt": cfg.negative_prompt,
                        "seed": derive_seed(seed, image_id),
                    }
                )
    return rows


def prompt_set(categories: pd.DataFrame, cfg: PromptsConfig, seed: int) -> PromptSet:
    """Build the prompts table and record which pairs it covers (see the module docstring for the rules)."""
    stray = [t for t in cfg.instrument_templates if t not in cfg.templates]
    if stray:
        raise PromptError(f"prompts.instrument_templates: {stray!r} not among prompts.templates")
    available = depictable_categories(categories)
    chosen = {c.category_id: c for c in select_categories(available, cfg.categories, set(categories["category_id"]))}
    pairs = choose_pairs(list(chosen), cfg.max_pairs, seed)
    rows = [row for a, b in pairs for row in pair_prompts(chosen[a], chosen[b], cfg, seed)]
    frame = pd.DataFrame(rows, columns=list(PROMPTS.column_names)).astype({"seed": "int64"})
    players = frozenset(cfg.players) if cfg.players is not None else None
    if players is not None and (unknown := sorted(players - set(chosen))):
        raise PromptError(f"prompts.players: unknown or unselected category id(s): {', '.join(unknown)}")
    skipped = (
        sum(orient(chosen[a], chosen[b], True, players) is None for a, b in pairs) if cfg.instrument_templates else 0
    )
    return PromptSet(frame.sort_values("image_id", ignore_index=True), pairs, skipped)


def build_prompts(categories: pd.DataFrame, cfg: PromptsConfig, seed: int) -> pd.DataFrame:
    """The prompts table (columns of the PROMPTS spec, sorted by image_id) for a categories table."""
    return prompt_set(categories, cfg, seed).frame


def run_prompts(
    workdir: str | Path, cfg: PromptsConfig, seed: int, *, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read the categories manifest, write the prompts manifest and return a summary of what was built."""
    categories = read_manifest(workdir, CATEGORIES)
    built = prompt_set(categories, cfg, seed)
    path = write_manifest(workdir, PROMPTS, built.frame, dict(provenance or {}))
    return {
        "pairs": len(built.pairs),
        "prompts": len(built.frame),
        "skipped_instrument_pairs": built.skipped_instrument_pairs,
        "manifest": str(path),
    }


def prompts_stage(
    work: Path, cfg: BuildConfig, provenance: dict[str, Any], *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """The category-pair prompt set with per-image seeds."""
    return run_prompts(work, cfg.prompts, cfg.seed, provenance=provenance)
