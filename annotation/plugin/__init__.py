"""`@is4/review`: FiftyOne operators and a panel for IS4 review sessions (`is4.annotation.review.use_plugin`
installs it). Thin adapters: the logic lives in `is4.annotation.review`.

- `refine_masks` re-segments the instances that reviewers marked: for the selected samples, or else the current
  view's samples tagged `needs-fix`, every category with clicks (`clicks` keypoints, see
  `is4.annotation.review.clicks`) goes through `is4.annotation.annotate.refine_instance`, and the samples' `sam`
  masks are reloaded from the annotations manifest.
- `accept` / `reject` set the decision tags of the selected samples (in the grid) or of the sample open in the
  modal (`is4.annotation.review.decide`); `reject` asks for one of the reasons. FiftyOne's Python operators take no
  key bindings (1.22): the keyboard path is the App's operator browser, the backtick key then `accept` + Enter.
- `audio` is a modal panel that plays the open sample's clips: the `audio` field (a predictions dataset: the
  instance's wav) or `audio_a` / `audio_b` (a review dataset after match: the clips matched to the two objects).
- `empty_view_notice` runs when a dataset opens and says so when the view shown is empty.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

AUDIO_FIELDS = ("audio", "audio_a", "audio_b")


class RefineMasks(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="refine_masks",
            label="IS4: refine masks from clicks",
            description="Run SAM on the clicks of needs-fix samples and reload their masks",
            dynamic=False,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Refine masks", icon="auto_fix_high", prompt=False),
        )

    def execute(self, ctx):
        # Lazy imports: the segmenter stack loads only when a reviewer asks for it.
        from is4.annotation.annotate import refine_instance
        from is4.annotation.review import NEEDS_FIX_TAG, refine_samples

        selected = list(ctx.selected or [])
        sample_ids = selected or ctx.view.match_tags(NEEDS_FIX_TAG).values("id")
        rows = refine_samples(ctx.dataset, sample_ids, refine_instance)
        ctx.ops.reload_samples()
        return {"refined": [row["instance_id"] for row in rows]}


def _targets(ctx):
    """The samples a decision applies to: the grid's selection, else the sample open in the modal."""
    ids = list(ctx.selected or [])
    if not ids and ctx.current_sample:
        ids = [ctx.current_sample]
    return ctx.dataset.select(ids) if ids else None


def _decide(ctx, decision, reason=None):
    """Set `decision` (reject: with its `reason`) on the samples of `_targets`, or say none is selected."""
    from is4.annotation.review.decide import decide

    view = _targets(ctx)
    if view is None:
        ctx.ops.notify(f"Select samples (or open one) to {decision}", variant="warning")
        return {"decided": 0}
    n = decide(view, decision, reason)
    ctx.ops.reload_samples()
    return {"decided": n}


class Accept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="accept",
            label="IS4: accept",
            description="Tag the selected samples (or the open one) accept",
            icon="check_circle",
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_VIEWER_ACTIONS, types.Button(label="Accept", icon="check_circle", prompt=False)
        )

    def execute(self, ctx):
        return _decide(ctx, "accept")


class Reject(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="reject",
            label="IS4: reject",
            description="Tag the selected samples (or the open one) reject:<reason>",
            icon="cancel",
        )

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS, types.Button(label="Reject", icon="cancel"))

    def resolve_input(self, ctx):
        from is4.config import REJECT_REASONS

        inputs = types.Object()
        inputs.enum("reason", list(REJECT_REASONS), label="Reason", required=True, default=REJECT_REASONS[0])
        return types.Property(inputs)

    def execute(self, ctx):
        return _decide(ctx, "reject", ctx.params.get("reason"))


class AudioPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="audio", label="IS4: audio", surfaces="modal", help_markdown="Plays the open sample's clips"
        )

    def on_load(self, ctx):
        self._load(ctx)

    def on_change_current_sample(self, ctx):
        self._load(ctx)

    def _load(self, ctx):
        from urllib.parse import quote

        clips = []
        if ctx.current_sample:
            sample = ctx.dataset[ctx.current_sample]
            for field in AUDIO_FIELDS:
                path = sample[field] if ctx.dataset.has_sample_field(field) else None
                if path:
                    clips.append({"field": field, "url": f"/media?filepath={quote(path, safe='')}"})
        ctx.panel.state.clips = clips

    def render(self, ctx):
        panel = types.Object()
        clips = ctx.panel.state.clips or []
        if not clips:
            panel.md("No clip for this sample (review datasets get theirs after the match stage).", name="none")
        for i, clip in enumerate(clips):
            panel.md(f"**{clip['field']}**", name=f"label_{i}")
            panel.media_player(f"player_{i}", clip["url"])
        return types.Property(panel)


class EmptyViewNotice(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="empty_view_notice", label="IS4: empty view notice", on_dataset_open=True)

    def execute(self, ctx):
        from is4.annotation.review.app import empty_view_message

        if ctx.view is not None and len(ctx.view) == 0:
            ctx.ops.notify(empty_view_message(ctx.dataset, ctx.view.name), variant="info")


def register(p):
    p.register(RefineMasks)
    p.register(Accept)
    p.register(Reject)
    p.register(AudioPanel)
    p.register(EmptyViewNotice)
