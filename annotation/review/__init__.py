"""FiftyOne review sessions: the verification dataset, reviewer actions, and their sync into the manifests.

FiftyOne is imported only in this package and in `annotation/plugin/`, always through `connect`, which configures
it first; `tags` never imports it. Design: docs/architecture.md.
"""

from .app import app_url, dataset_url, empty_view_message, launch
from .clicks import (
    BOXES_FIELD,
    CLICK_ATTR,
    CLICKS_FIELD,
    MASKS_FIELD,
    NEGATIVE,
    POSITIVE,
    Point,
    RefineFn,
    Refinement,
    pending_refinements,
    refine_samples,
    reload_masks,
)
from .connect import INFO_KEY, PLUGIN_DIR, PLUGIN_LINK_NAME, PLUGIN_NAME, ReviewError, connect, dataset_name, use_plugin
from .dataset import SAVED_VIEWS, build_dataset, ensure_dataset, open_dataset, refresh
from .decide import DECISIONS, decide
from .predictions import load_predictions, per_category, predictions_dataset_name
from .sync import sync, verification_lock
from .tags import (
    ACCEPT_TAG,
    CONFLICT,
    INVALID,
    NEEDS_FIX_TAG,
    REJECT_TAG,
    decision_tags,
    is_reject_tag,
    reject_tags,
    tag_decision,
)

__all__ = [
    "ACCEPT_TAG",
    "BOXES_FIELD",
    "CLICK_ATTR",
    "CLICKS_FIELD",
    "CONFLICT",
    "DECISIONS",
    "INFO_KEY",
    "INVALID",
    "MASKS_FIELD",
    "NEEDS_FIX_TAG",
    "NEGATIVE",
    "PLUGIN_DIR",
    "PLUGIN_LINK_NAME",
    "PLUGIN_NAME",
    "POSITIVE",
    "REJECT_TAG",
    "SAVED_VIEWS",
    "Point",
    "RefineFn",
    "Refinement",
    "ReviewError",
    "app_url",
    "build_dataset",
    "connect",
    "dataset_name",
    "dataset_url",
    "decide",
    "decision_tags",
    "empty_view_message",
    "ensure_dataset",
    "is_reject_tag",
    "launch",
    "load_predictions",
    "open_dataset",
    "pending_refinements",
    "per_category",
    "predictions_dataset_name",
    "refine_samples",
    "refresh",
    "reject_tags",
    "reload_masks",
    "sync",
    "tag_decision",
    "use_plugin",
    "verification_lock",
]
