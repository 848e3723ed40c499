"""`@is4/review`: FiftyOne operators for IS4 review sessions (`is4.annotation.review.use_plugin` installs it).

`refine_masks` re-segments the instances that reviewers marked: for the selected samples, or else the current
view's samples tagged `needs-fix`, every category with clicks (`clicks` keypoints, see `is4.annotation.review.clicks`)
goes through `is4.annotation.annotate.refine_instance`, and the samples' `sam` masks are reloaded from the
annotations manifest. The logic lives in `is4.annotation.review.refine_samples`; this stays a thin adapter.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types


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


def register(p):
    p.register(RefineMasks)
