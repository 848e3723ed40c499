"""The training methods by name: `train.method` -> "module:Class", without importing torch (the CLI's help reads it).

Each class is a `is4.trainers.method.TrainMethod`, imported on use so that one method's dependencies never load for
another.
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "alignment": "is4.trainers.align:AlignmentMethod",
    "acl": "is4.trainers.acl:ACLMethod",
    "jsa": "is4.trainers.jsa:JSAMethod",
}


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)
