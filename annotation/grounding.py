"""Text-grounded boxes with OWLv2 (`Owlv2ForObjectDetection`, `Owlv2Processor`): the best box per text query.

**Frames.** `Owlv2Processor` pads the image with zeros at the bottom and on the right to a square of side
`max(H, W)` (`Owlv2ImageProcessor.pad`) and only then resizes it to the model's input size (960×960 for the real
checkpoints). `pred_boxes` are `(cx, cy, w, h)` normalised to that padded square, so both axes map back to pixels
with the same factor `max(H, W)` — not `(W, H)` as for an unpadded image. transformers' own
`post_process_object_detection` does exactly this (`_scale_boxes` multiplies by the max side); it does not clip, so
a box may reach into the padding beyond the image: `padded_boxes_to_image` clips to the image.

**Per query.** The library's post-processing gives each box its single best query (max over queries), so a
query that is never a box's best one gets nothing; here every query takes its own highest-scoring box instead
(`sigmoid(logits[:, q])`), kept only when that score is at least the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from is4.config import ModelRef
from is4.pipeline.common.models import load_pretrained

ROLE = "detector"

Detection = tuple[list[float], float]  # ([x1, y1, x2, y2] in image pixels, score)


def padded_boxes_to_image(boxes_cxcywh, height: int, width: int):
    """OWLv2 boxes `(cx, cy, w, h)`, normalised to the zero-padded square, as `[x1, y1, x2, y2]` image pixels.

    The square has side `max(height, width)` and the image sits in its top-left corner, so every coordinate is
    scaled by that side; the result is clipped to the image `[0, width] × [0, height]`. Works on a torch tensor
    of shape (..., 4).
    """
    import torch

    boxes = torch.as_tensor(boxes_cxcywh, dtype=torch.float64)
    side = float(max(height, width))
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * side
    limits = torch.tensor([width, height, width, height], dtype=torch.float64)
    return torch.minimum(xyxy.clamp(min=0.0), limits)


class Detector:
    """OWLv2 open-vocabulary detector: text queries → one box per query."""

    def __init__(self, model, processor, *, model_id: str, revision: str, device, dtype) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path) -> Detector:
        """Resolve the configured detector (Hub id, local directory or `tiny-random:owlv2`) and load it."""
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        loaded = load_pretrained(ref, workdir, ROLE, Owlv2ForObjectDetection, Owlv2Processor)
        return cls(
            loaded.model,
            loaded.processor,
            model_id=loaded.resolved.model_id,
            revision=loaded.resolved.revision,
            device=loaded.device,
            dtype=loaded.dtype,
        )

    def scores_and_boxes(self, image, queries: Sequence[str]):
        """(scores: P×Q sigmoid scores, boxes: P×4 image-pixel boxes) over the model's P box predictions."""
        import torch

        if not queries:
            raise ValueError("detect needs at least one text query")
        image = image.convert("RGB")
        inputs = self.processor(text=[list(queries)], images=image, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        scores = torch.sigmoid(out.logits[0].float()).cpu()  # (P, Q)
        boxes = padded_boxes_to_image(out.pred_boxes[0].float().cpu(), image.height, image.width)
        return scores, boxes

    def detect(self, image, queries: Sequence[str], *, threshold: float = 0.0) -> list[Detection | None]:
        """For each query, its highest-scoring box `([x1, y1, x2, y2], score)` if the score is >= `threshold`
        and the box (clipped to the image) has an area; None otherwise."""
        import torch

        scores, boxes = self.scores_and_boxes(image, queries)
        found: list[Detection | None] = []
        for q in range(len(queries)):
            best = int(torch.argmax(scores[:, q]))
            score = float(scores[best, q])
            box = [float(v) for v in boxes[best]]
            if score >= threshold and box[2] > box[0] and box[3] > box[1]:
                found.append((box, score))
            else:
                found.append(None)
        return found
