"""Stage entry points with one shape, `stage(workdir, BuildConfig, …) -> summary dict`, for the CLI and the flow.

Each picks its config section and models out of the build config and calls the stage function; model-backed
helpers are imported only when a stage needs them, so a stage without models never loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from is4.config import BuildConfig
from is4.pipeline.images.categories import run_categories
from is4.pipeline.images.prompts import run_prompts


def categories_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Map the VGG-SS labels to objects (rules, LLM proposals when configured, reviewed overrides)."""
    propose = None
    if cfg.categories.llm_proposals:
        from is4.pipeline.common.llm import ChatLM, object_name_proposer
        from is4.pipeline.common.models import ModelError

        if cfg.models.object_phrase is None:
            raise ModelError("categories.llm_proposals needs models.object_phrase")
        propose = object_name_proposer(ChatLM.load(cfg.models.object_phrase, workdir))
    return run_categories(workdir, cfg.categories, propose=propose)


def prompts_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Build the category-pair prompt set with per-image seeds."""
    return run_prompts(workdir, cfg.prompts, cfg.seed)


def prescreen_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """CLIP scores that order the verification queue; automatic rejects where configured."""
    from is4.pipeline.images.prescreen import run_prescreen

    return run_prescreen(workdir, cfg.prescreen, cfg.models.prescreen)


def generate_stage(workdir: Path, cfg: BuildConfig, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Stable Diffusion images for one shard of the prompts; the images manifest covers every finished shard."""
    from is4.pipeline.images.generate import run_generate

    return run_generate(workdir, cfg.generate, cfg.models.image_generator, shard=shard).as_dict()


def match_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """A VGGSound clip of its category for every annotated object, seeded, with the leakage guard."""
    from is4.pipeline.match import run_match

    return run_match(workdir, cfg.match, cfg.seed)


def caption_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Image captions, audio captions and the sounding object's phrase for training clips (and IS4 instances)."""
    from is4.pipeline.captions.run import run_captions

    return run_captions(workdir, cfg)


def release_stage(workdir: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Package the release (official layout, manifests, card, Croissant, checksums, archive) and verify it."""
    from is4.pipeline.release.build import ReleaseError, build_release, verify_release

    path = build_release(workdir, cfg.release, cfg.model_dump(mode="json"))
    archive = path.with_name(path.name + ".tar.gz")
    report = verify_release(archive)
    if not report.ok:
        raise ReleaseError(f"release {archive} does not verify: {report.summary()}")
    return {"release": str(path), "archive": str(archive), "verified": True}
