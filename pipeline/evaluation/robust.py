"""AVSBench-Robust (ACL-SSL Table 5; Li et al. 2025, "Do Audio-Visual Segmentation Models Truly Segment Sounding
Objects?"): a model's maps under each frame's own audio and under negative audio conditions (silence, noise,
off-screen sound), scored for segmentation and for false positives.

Predictions file: one `.npz` holding, for every instance of a mask ground truth, the map under its own audio under
the instance id (as `segmentation` reads it) and the map under each negative condition under
`<condition>/<instance id>` (`condition_key`); the conditions are the prefixes the file holds (e.g. `silence`,
`noise`, `offscreen`), each with a map for every instance.

- **positive**: mIoU and F as the `segmentation` task computes them under the protocol (its cut, its mIoU mean,
  the F-score's maximum over thresholds);
- **per negative condition**: mIoU and F of the condition's maps against the frame's own object mask, computed as
  the positive ones (lower is better: that object does not sound), and **FPR**, the share of the 224×224 pixels
  the map activates, as AVSBench-Robust's `calculate_FPR` (training_evaluation/.../scripts/s4/test.py): the map
  resized as the protocol resizes it (not normalised), then `sigmoid(map) > 0.5` in float32 (`FPR_RULES`:
  `logit`, the default, for maps of logits or signed similarities) or `map > 0.5` (`probability`, for maps
  already in [0, 1]); averaged over instances (AVSBench-Robust averages its test batches' means: the same number
  when every batch is full);
- **G-mIoU** = the harmonic mean of the positive mIoU and 100 − the negative mIoU, the negative mIoU being the mean
  over the conditions; **G-F** likewise with F; **G-FPR** = the mean FPR over the conditions.

ACL-SSL §4.1 defines the three combinations in words; the AVSBench-Robust authors computed them in a spreadsheet
(their README), so no code fixes the details. Two are this module's literal reading, named here and in the README:
the negative mIoU / F are scored against the frame's object mask (the reading under which "lower is better"
holds; AVSBench's no-object rule, an empty mask, would make a silent map score 100), and "the negative score" in
the harmonic means is the mean over the conditions (as G-FPR is). All in percent (the paper prints FPR and G-FPR
as fractions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from is4.pipeline.evaluation import metrics
from is4.pipeline.evaluation.errors import EvaluationError
from is4.pipeline.evaluation.evaluate import score_source
from is4.pipeline.evaluation.formats import GroundTruth
from is4.pipeline.evaluation.predictions import NpzMaps, prepare_map

FPR_RULES = {
    "logit": "pixels with sigmoid(map) > 0.5 in float32, i.e. map > 0 (AVSBench-Robust's calculate_FPR)",
    "probability": "pixels with map > 0.5 (maps already in [0, 1])",
}
SEPARATOR = "/"
NEAR_ZERO = np.float32(1e-3)  # sigmoid(±1e-3) = 0.5 ± 2.5e-4: far from float32's rounding at 0.5


def condition_key(condition: str, instance_id: str) -> str:
    """The predictions-file key of an instance's map under a negative audio condition."""
    return f"{condition}{SEPARATOR}{instance_id}"


def conditions_of(keys, instance_ids) -> list[str]:
    """The negative conditions a predictions file holds: the prefixes of its `<condition>/<instance id>` keys."""
    ids = set(instance_ids)
    found = set()
    for key in keys:
        condition, sep, rest = key.partition(SEPARATOR)
        if sep and condition and rest in ids:
            found.add(condition)
    return sorted(found)


class ConditionMaps:
    """The maps of one audio condition in a predictions archive, keyed by instance id (a map source for
    `evaluate.score_source`); condition None: the positive maps, under the plain ids."""

    def __init__(self, source: NpzMaps, condition: str | None, instance_ids):
        self.source = source
        self.prefix = "" if condition is None else condition + SEPARATOR
        n = len(self.prefix)
        wanted = set(instance_ids)
        self._keys = {key[n:]: key for key in source.keys() if key.startswith(self.prefix) and key[n:] in wanted}

    def keys(self):
        """The instance ids this condition has maps for."""
        return self._keys.keys()

    def read(self, instance_id: str) -> np.ndarray:
        """The instance's map under this condition."""
        return self.source.read(self._keys[instance_id])

    def read_into(self, instance_id: str, out: np.ndarray) -> bool:
        """As `NpzMaps.read_into`, for the instance's map under this condition."""
        return self.source.read_into(self._keys[instance_id], out)


def activated_share(arr: np.ndarray, protocol: metrics.Protocol, rule: str = "logit") -> float:
    """The share of the 224×224 pixels a map activates under `rule` (`FPR_RULES`), in [0, 1]."""
    ready = np.asarray(prepare_map(arr, protocol), dtype=np.float32)
    if rule != "logit":
        return float(np.count_nonzero(ready > np.float32(0.5))) / ready.size
    # sigmoid(x) > 0.5 is x > 0 wherever |x| >= NEAR_ZERO; torch decides the pixels closer to 0, where float32
    # rounding of its sigmoid can give exactly 0.5 (not above it) for a tiny positive x.
    active = ready >= NEAR_ZERO
    near = np.abs(ready) < NEAR_ZERO
    if near.any():
        import torch

        with torch.no_grad():
            active[near] = (torch.sigmoid(torch.from_numpy(ready[near])) > 0.5).numpy()
    return float(np.count_nonzero(active)) / ready.size


def harmonic(positive: float, negative: float) -> float:
    """The harmonic mean of a positive score and 100 − a negative score (percent; 0 when both terms are 0)."""
    good = 100.0 - negative
    return 0.0 if positive + good == 0 else 2.0 * positive * good / (positive + good)


def robust(
    truth: GroundTruth,
    predictions: str | Path,
    protocol: str | metrics.Protocol = metrics.DEFAULT_PROTOCOL,
    *,
    fpr_rule: str = "logit",
) -> dict:
    """{"benchmark", "instances", "protocol", "fpr_rule", "conditions", "positive": <segmentation summary>,
    <condition>: {miou, fscore, fpr}, miou, fscore, negative_miou, negative_fscore, g_miou, g_f, g_fpr} in
    percent at full precision (see the module docstring)."""
    if fpr_rule not in FPR_RULES:
        raise EvaluationError(f"the FPR rule must be one of {', '.join(FPR_RULES)}, not {fpr_rule!r}")
    if truth.gt != "mask":
        raise EvaluationError(f"{truth.source}: the robust task scores masks; this is {truth.gt} ground truth")
    protocol = metrics.get_protocol(protocol)
    ids = truth.instance_ids
    with NpzMaps(predictions) as source:
        conditions = conditions_of(source.keys(), ids)
        if not conditions:
            raise EvaluationError(
                f"{predictions}: no maps under negative audio conditions (keys `<condition>/<instance id>`, "
                f"e.g. {condition_key('silence', ids[0])})"
            )
        positive = score_source(truth, ConditionMaps(source, None, ids), protocol, name=str(predictions)).summary
        out: dict = {
            "benchmark": truth.benchmark,
            "instances": len(truth),
            "protocol": protocol.name,
            "fpr_rule": fpr_rule,
            "conditions": conditions,
            "positive": positive,
        }
        for condition in conditions:
            maps = ConditionMaps(source, condition, ids)
            scored = score_source(truth, maps, protocol, name=f"{predictions} ({condition})").summary
            shares = [activated_share(maps.read(iid), protocol, fpr_rule) for iid in ids]
            out[condition] = {
                "miou": scored["miou"],
                "fscore": scored["fscore"],
                "fpr": float(np.mean(shares)) * 100.0,
            }
    negative_miou = float(np.mean([out[c]["miou"] for c in conditions]))
    negative_fscore = float(np.mean([out[c]["fscore"] for c in conditions]))
    out.update(
        miou=positive["miou"],
        fscore=positive["fscore"],
        negative_miou=negative_miou,
        negative_fscore=negative_fscore,
        g_miou=harmonic(positive["miou"], negative_miou),
        g_f=harmonic(positive["fscore"], negative_fscore),
        g_fpr=float(np.mean([out[c]["fpr"] for c in conditions])),
    )
    return out


def format_robust(result: dict) -> str:
    """A text table of `robust` output: the positive row, one row per condition, the harmonic combinations."""
    lines = [["", "mIoU", "F", "FPR"], ["positive", f"{result['miou']:.2f}", f"{result['fscore']:.2f}", "-"]]
    for condition in result["conditions"]:
        s = result[condition]
        lines.append([condition, f"{s['miou']:.2f}", f"{s['fscore']:.2f}", f"{s['fpr']:.2f}"])
    lines.append(["G- (harmonic)", f"{result['g_miou']:.2f}", f"{result['g_f']:.2f}", f"{result['g_fpr']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )
