"""Croissant 1.1 metadata of a release (`croissant.json`) and its validation with mlcroissant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from is4 import __version__
from is4.config import ReleaseConfig
from is4.manifests.checksum import sha256_file
from is4.manifests.decisions import LOG_PATH
from is4.pipeline.release.layout import CC_BY_4, COPIED_MANIFESTS, HF_PARQUET, ReleaseError

CROISSANT_CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}


def croissant_metadata(
    root: Path, cfg: ReleaseConfig, stats: dict[str, Any], image_models: list[str]
) -> dict[str, Any]:
    """The Croissant JSON-LD of the release under `root` (its FileObjects hashed from the files there)."""

    def file_object(id_: str, rel: str, fmt: str, description: str) -> dict[str, Any]:
        return {
            "@type": "cr:FileObject",
            "@id": id_,
            "name": id_,
            "description": description,
            "contentUrl": rel,
            "encodingFormat": fmt,
            "sha256": sha256_file(root / rel),
        }

    def file_set(id_: str, includes: str, fmt: str, description: str) -> dict[str, Any]:
        return {
            "@type": "cr:FileSet",
            "@id": id_,
            "name": id_,
            "description": description,
            "includes": includes,
            "encodingFormat": fmt,
        }

    distribution = [
        file_object(
            "instances-parquet",
            HF_PARQUET,
            "application/x-parquet",
            "one row per instance; image, audio and mask paths relative to the release root",
        ),
        file_object("is4-bbox-json", "is4_bbox.json", "application/json", "official box annotations"),
        file_object("is4-seg-json", "is4_seg.json", "application/json", "official mask annotations"),
    ]
    for table in sorted((*COPIED_MANIFESTS, "clips")):
        distribution.append(
            file_object(
                f"manifest-{table}", f"manifests/{table}.parquet", "application/x-parquet", f"is4 {table} manifest"
            )
        )
    distribution.append(
        file_object(
            "decision-log",
            LOG_PATH,
            "application/jsonlines",
            "every verification decision in the order it was made (the verification manifest is its last per image)",
        )
    )
    distribution += [
        file_set("visual-frames", "visual_frames/*.jpg", "image/jpeg", "frames, one per instance"),
        file_set("audio-wav", "audio_wav/*.wav", "audio/wav", "16 kHz VGGSound clips, one per instance"),
        file_set("gt-masks", "gt_masks/*.jpg", "image/jpeg", "object masks (> 127 is object)"),
    ]

    def parquet_field(name: str, data_type: str, description: str, json_path: str | None = None) -> dict[str, Any]:
        """A field read from a column of `hf/instances.parquet`, through `json_path` where given."""
        source: dict[str, Any] = {"fileObject": {"@id": "instances-parquet"}, "extract": {"column": name}}
        if json_path:
            source["transform"] = {"jsonPath": json_path}
        return {
            "@type": "cr:Field",
            "@id": f"instances/{name}",
            "name": name,
            "description": description,
            "dataType": data_type,
            "source": source,
        }

    fields = [
        parquet_field("instance_id", "sc:Text", "<image_id>_<category>: the file stem of every file of the instance"),
        parquet_field("category", "sc:Text", "category id of the sounding object"),
        parquet_field("clip_id", "sc:Text", "VGGSound clip id (<YouTube id>_<start second>)"),
        parquet_field(
            "gt_box",
            "cr:BoundingBox",
            f"[x1, y1, x2, y2] pixel edges in the {cfg.image_size}x{cfg.image_size} frame, x2/y2 exclusive",
            # The column reads as a numpy array; the identity path, applied to each coordinate, gives the list
            # that mlcroissant parses as a box.
            json_path="$",
        ),
        parquet_field(
            "image", "sc:ImageObject", f"the {cfg.image_size}x{cfg.image_size} frame (JPEG)", json_path="bytes"
        ),
        parquet_field("audio", "sc:AudioObject", "the object's 16 kHz VGGSound clip (WAV)", json_path="bytes"),
        parquet_field("mask", "sc:ImageObject", "the object's mask (JPEG; > 127 is object)", json_path="bytes"),
    ]
    models = ", ".join(image_models) or "an image generation model"
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": f"IS4 {cfg.version}",
        "alternateName": cfg.title,
        "description": (
            f"{cfg.title}: {stats['instances']} instances over {stats['images']} generated two-object images "
            f"({stats['categories']} categories); each object has a mask and a box and is paired with a real "
            f"VGGSound audio clip of its category. Images generated with {models}; their use is subject to that "
            "model's licence. Class labels and clip lists from VGGSound / VGG-SS (CC BY 4.0)."
        ),
        "version": cfg.version,
        **({"datePublished": cfg.date.isoformat()} if cfg.date else {}),
        "license": CC_BY_4,
        "citeAs": f"{cfg.title}, release {cfg.version}. Built with is4-builder {__version__}.",
        "keywords": ["sound source localisation", "audio-visual", "segmentation", "VGGSound", "synthetic images"],
        "distribution": distribution,
        "recordSet": [
            {
                "@type": "cr:RecordSet",
                "@id": "instances",
                "name": "instances",
                "description": "one record per instance: the frame, the object's audio and its box",
                "key": {"@id": "instances/instance_id"},
                "field": fields,
            }
        ],
    }


def validate_croissant(path: Path, expected_records: int | None = None) -> list[str]:
    """Validate a croissant.json with mlcroissant; raise ReleaseError on an error. Returns the warnings.

    With `expected_records`, the instances RecordSet is also generated (which re-hashes every FileObject against
    its sha256 and joins the frames to the rows) and must give that many records.
    """
    import mlcroissant as mlc

    try:
        dataset = mlc.Dataset(jsonld=path)
    except mlc.ValidationError as exc:
        raise ReleaseError(f"{path}: Croissant validation failed:\n{exc}") from exc
    issues = dataset.metadata.ctx.issues
    if issues.errors:
        raise ReleaseError(f"{path}: Croissant validation failed:\n{issues.report()}")
    if expected_records is not None:
        try:
            count = sum(1 for _ in dataset.records("instances"))
        except Exception as exc:  # noqa: BLE001 - mlcroissant raises many types; all mean the metadata is unusable
            raise ReleaseError(f"{path}: Croissant records cannot be generated: {exc}") from exc
        if count != expected_records:
            raise ReleaseError(f"{path}: Croissant gives {count} instance records, expected {expected_records}")
    return sorted(str(w) for w in issues.warnings)
