"""The release: official layout, boxes in the 224 frame, byte reproducibility, verification, safe archives,
Croissant metadata and loading with Hugging Face datasets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from scipy.io import wavfile

import is4
from is4.config import MatchConfig
from is4.manifests.decisions import LOG_PATH, append_records, log_path
from is4.manifests.io import manifest_path, read_manifest
from is4.pipeline.match import run_match
from is4.pipeline.release import (
    ReleaseError,
    box_area_figure,
    build_release,
    load_as_hf_dataset,
    safe_extract,
    validate_croissant,
    verify_release,
    write_archive,
)
from is4.pipeline.release.hf import read_wav_bytes
from is4.pipeline.release.media import mask_jpeg, scale_box
from is4.pipeline.verification import VerificationError
from tests.support import IS4
from tests.support.matched import (
    ACCEPTED,
    BUILD_CONFIG,
    CFG,
    IMAGE_H,
    IMAGE_W,
    MODEL_ID,
    MODEL_REVISION,
    OBJECT_COLOURS,
    SAM_REVISION,
    SEED,
    drop_annotation,
    empty_mask,
    make_workdir,
    matched_workdir,
)

NAME = "is4-0.1.0"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(work directory, release directory) built once for the read-only tests."""
    work = matched_workdir(tmp_path_factory.mktemp("release") / "work")
    return work, build_release(work, CFG, BUILD_CONFIG)


def _instances(work: Path) -> list[str]:
    return sorted(read_manifest(work, "instances")["instance_id"])


def test_official_layout(built: tuple[Path, Path]) -> None:
    work, rel = built
    assert rel == work / "releases" / NAME
    assert (work / "releases" / f"{NAME}.tar.gz").is_file()
    assert [p.name for p in (work / "releases").iterdir() if p.name.startswith(".")] == []  # no staging left
    ids = _instances(work)
    assert len(ids) == 2 * len(ACCEPTED)
    for folder, suffix in (("visual_frames", ".jpg"), ("audio_wav", ".wav"), ("gt_masks", ".jpg")):
        files = sorted((rel / folder).iterdir())
        assert [p.stem for p in files] == ids and {p.suffix for p in files} == {suffix}

    bbox = json.loads((rel / "is4_bbox.json").read_text())
    seg = json.loads((rel / "is4_seg.json").read_text())
    assert isinstance(bbox, list) and len(bbox) == len(seg) == len(ids)
    for entry, seg_entry, iid in zip(bbox, seg, ids):
        assert set(entry) == {"image", "audio", "gt_box"}
        assert entry["image"] == f"visual_frames/{iid}.jpg" and entry["audio"] == f"audio_wav/{iid}.wav"
        assert Path(entry["image"]).stem == Path(entry["audio"]).stem == iid
        assert all(isinstance(v, int) for v in entry["gt_box"])
        assert seg_entry == {"image": entry["image"], "audio": entry["audio"], "gt_box": f"gt_masks/{iid}.jpg"}

    instances = read_manifest(work, "instances").set_index("instance_id")
    for iid in ids:
        with Image.open(rel / f"visual_frames/{iid}.jpg") as im:
            assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"
            assert not im.getexif() and "exif" not in im.info
            frame = np.asarray(im, dtype=float)
        # The frame is the whole source image stretched to 224×224 (up to JPEG error).
        with Image.open(work / instances.loc[iid, "image_path"]) as src:
            expected = np.asarray(src.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=float)
        assert np.abs(frame - expected).mean() < 3
        # The object's colour is where the released mask says it is.
        with Image.open(rel / f"gt_masks/{iid}.jpg") as m:
            inside = np.asarray(m.convert("L")) > 127
        colour = np.array(OBJECT_COLOURS[instances.loc[iid, "category"]])
        assert np.abs(np.median(frame[inside], axis=0) - colour).max() < 12
    # The wav is the matched clip, unchanged, at 16 kHz.
    for iid in ids:
        shipped = (rel / f"audio_wav/{iid}.wav").read_bytes()
        assert shipped == (work / instances.loc[iid, "audio_path"]).read_bytes()
        assert wavfile.read(io.BytesIO(shipped))[0] == 16000

    # Manifests: copied byte for byte, clips only those used.
    for table in ("categories", "images", "verification", "annotations", "instances"):
        assert (rel / f"manifests/{table}.parquet").read_bytes() == manifest_path(work, table).read_bytes()
    # With the decision log the verification manifest projects (its whole history), byte for byte.
    assert (rel / LOG_PATH).read_bytes() == log_path(work).read_bytes()
    clips = pq.read_table(rel / "manifests/clips.parquet").column("clip_id").to_pylist()
    assert sorted(clips) == sorted(set(instances["clip_id"]))


def test_boxes_match_the_resized_masks(built: tuple[Path, Path]) -> None:
    work, rel = built
    bbox = {Path(e["image"]).stem: e["gt_box"] for e in json.loads((rel / "is4_bbox.json").read_text())}
    annotations = read_manifest(work, "annotations").set_index("instance_id")
    for iid, box in bbox.items():
        with Image.open(rel / f"gt_masks/{iid}.jpg") as im:
            assert im.size == (224, 224)
            mask = np.asarray(im.convert("L")) > 127
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        extent = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert np.abs(np.array(extent) - np.array(box)).max() <= 1, (iid, extent, box)
        # And the box is the image-space box scaled by the resize factors (x and y differ: 96x80 → 224x224).
        x1, y1, x2, y2 = annotations.loc[iid, "bbox_xyxy"]
        sx, sy = 224 / IMAGE_W, 224 / IMAGE_H
        assert np.abs(np.array(box) - np.array([x1 * sx, y1 * sy, x2 * sx, y2 * sy])).max() <= 1.0
        # The released mask covers the same object as the source mask, resized.
        with Image.open(work / annotations.loc[iid, "mask_path"]) as src:
            expected = np.asarray(src.convert("L").resize((224, 224), Image.Resampling.NEAREST)) > 127
        assert (mask != expected).mean() < 0.002


def test_two_builds_are_byte_identical(built: tuple[Path, Path], tmp_path: Path) -> None:
    work, rel = built
    other = tmp_path / "elsewhere" / "work"
    shutil.copytree(work, other, ignore=shutil.ignore_patterns("releases"))
    rel2 = build_release(other, CFG, BUILD_CONFIG)
    assert _tree(rel2) == _tree(rel)
    archive = (work / "releases" / f"{NAME}.tar.gz").read_bytes()
    assert (other / "releases" / f"{NAME}.tar.gz").read_bytes() == archive
    # Rebuilding in place replaces the release with the same bytes and leaves no staging directory.
    build_release(other, CFG, BUILD_CONFIG)
    assert (other / "releases" / f"{NAME}.tar.gz").read_bytes() == archive
    assert sorted(p.name for p in (other / "releases").iterdir()) == [NAME, f"{NAME}.tar.gz"]


def test_archive_is_normalised(built: tuple[Path, Path]) -> None:
    work, rel = built
    raw = (work / "releases" / f"{NAME}.tar.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert not raw[3] & 0x08  # no file name in the gzip header
    with tarfile.open(work / "releases" / f"{NAME}.tar.gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == NAME
    assert all(n == NAME or n.startswith(NAME + "/") for n in names)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644) and (m.isdir() or m.isfile())
    files = {n[len(NAME) + 1 :] for n, m in zip(names, members) if m.isfile()}
    assert files == set(_tree(rel))


def test_checksums_cover_every_file(built: tuple[Path, Path]) -> None:
    _, rel = built
    lines = (rel / "SHA256SUMS").read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths)
    assert set(paths) == set(_tree(rel)) - {"SHA256SUMS"}
    for line in lines:
        digest, path = line.split("  ", 1)
        assert hashlib.sha256((rel / path).read_bytes()).hexdigest() == digest
    assert verify_release(rel).ok
    report = verify_release(rel.parent / f"{NAME}.tar.gz")
    assert report.ok and report.checked == len(lines)


def test_a_changed_input_pixel_changes_the_checksum(built: tuple[Path, Path], tmp_path: Path) -> None:
    work, rel = built
    other = tmp_path / "work"
    shutil.copytree(work, other, ignore=shutil.ignore_patterns("releases"))
    image = other / "media/images/cello_dog_1.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[40, 48] = 255 - pixels[40, 48]
    Image.fromarray(pixels).save(image)
    rel2 = build_release(other, CFG, BUILD_CONFIG)

    def sums(root: Path) -> dict[str, str]:
        return {p: d for d, p in (line.split("  ", 1) for line in (root / "SHA256SUMS").read_text().splitlines())}

    a, b = sums(rel), sums(rel2)
    changed = {p for p in a if a[p] != b[p]}
    assert {"visual_frames/cello_dog_1_cello.jpg", "visual_frames/cello_dog_1_dog.jpg"} <= changed
    assert not any(p.startswith(("audio_wav/", "gt_masks/")) for p in changed)
    assert not any(p.startswith("visual_frames/cello_dog_0") for p in changed)


def test_verify_names_changed_missing_and_extra_files(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, rel = built
    copy = tmp_path / NAME
    shutil.copytree(rel, copy)
    frame = copy / "visual_frames/cello_dog_2_dog.jpg"
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0x01
    frame.write_bytes(bytes(data))
    (copy / "audio_wav/cello_dog_0_cello.wav").unlink()
    (copy / "gt_masks/stray.jpg").write_bytes(b"not in the sums")
    report = verify_release(copy)
    assert not report.ok
    assert report.changed == ["visual_frames/cello_dog_2_dog.jpg"]
    assert report.missing == ["audio_wav/cello_dog_0_cello.wav"]
    assert report.extra == ["gt_masks/stray.jpg"]
    assert "visual_frames/cello_dog_2_dog.jpg" in report.summary()

    # The same tampering inside an archive is found too.
    tampered = tmp_path / "tampered.tar.gz"
    write_archive(copy, tampered, NAME)
    report = verify_release(tampered)
    assert (report.changed, report.missing, report.extra) == (
        ["visual_frames/cello_dog_2_dog.jpg"],
        ["audio_wav/cello_dog_0_cello.wav"],
        ["gt_masks/stray.jpg"],
    )
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(ReleaseError, match="no SHA256SUMS"):
        verify_release(copy)


def _evil_archive(path: Path, bad: tarfile.TarInfo, data: bytes = b"x") -> None:
    """An archive with a harmless file first, then the unsafe member."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo(f"{NAME}/README.md")
        good.size = 5
        tar.addfile(good, io.BytesIO(b"hello"))
        if bad.isfile():
            bad.size = len(data)
            tar.addfile(bad, io.BytesIO(data))
        else:
            tar.addfile(bad)


def _member(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil"), r"'\.\./evil'.*'\.\.'"),
        (_member(f"{NAME}/../../evil"), r"'\.\.'"),
        (_member("/abs/evil"), r"'/abs/evil'.*absolute"),
        (_member(f"{NAME}/link", tarfile.SYMTYPE, "../../outside"), r"'is4-0\.1\.0/link'.*symlink.*outside"),
        (_member(f"{NAME}/abslink", tarfile.SYMTYPE, "/etc/passwd"), r"abslink.*symlink"),
        (_member(f"{NAME}/hard", tarfile.LNKTYPE, "../outside"), r"'is4-0\.1\.0/hard'.*hard link"),
        (_member(f"{NAME}/dev", tarfile.CHRTYPE), r"'is4-0\.1\.0/dev'.*device"),
        (_member(f"{NAME}/fifo", tarfile.FIFOTYPE), r"fifo"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink", "device", "fifo"],
)
def test_unsafe_archives_are_refused_before_extraction(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    _evil_archive(archive, member)
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(ReleaseError, match=reason):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []  # not even the harmless first member
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "a" / "b" / "evil").exists()
    with pytest.raises(ReleaseError, match=reason):
        verify_release(archive)


def test_croissant_validates(built: tuple[Path, Path]) -> None:
    import mlcroissant as mlc

    work, rel = built
    path = rel / "croissant.json"
    assert validate_croissant(path, expected_records=len(_instances(work))) == []  # no warning either
    meta = json.loads(path.read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert meta["datePublished"] == "2026-12-07"  # the configured date, not the build's clock
    objects = {d["contentUrl"]: d for d in meta["distribution"] if d["@type"] == "cr:FileObject"}
    for url, obj in objects.items():
        assert obj["sha256"] == hashlib.sha256((rel / url).read_bytes()).hexdigest()
    types = {f["name"]: f["dataType"] for f in meta["recordSet"][0]["field"]}
    assert types["image"] == "sc:ImageObject" and types["mask"] == "sc:ImageObject"
    assert types["audio"] == "sc:AudioObject" and types["gt_box"] == "cr:BoundingBox"

    bbox = {Path(e["image"]).stem: e for e in json.loads((rel / "is4_bbox.json").read_text())}
    records = list(mlc.Dataset(jsonld=path).records("instances"))
    assert len(records) == len(bbox)
    for rec in records:
        iid = rec["instances/instance_id"].decode()
        assert rec["instances/gt_box"] == [float(v) for v in bbox[iid]["gt_box"]]
        assert rec["instances/audio"] == (rel / bbox[iid]["audio"]).read_bytes()  # the wav file itself
        assert rec["instances/image"].size == (224, 224)
        with Image.open(rel / "gt_masks" / f"{iid}.jpg") as mask:
            assert np.array_equal(np.asarray(rec["instances/mask"]), np.asarray(mask))

    # An invalid document fails the validation with mlcroissant's message.
    broken = dict(meta)
    broken["recordSet"] = [
        dict(
            meta["recordSet"][0],
            field=[
                dict(
                    meta["recordSet"][0]["field"][0],
                    source={"fileObject": {"@id": "no-such-file"}, "extract": {"column": "instance_id"}},
                )
            ],
        )
    ]
    bad = rel.parent.parent / "broken-croissant.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ReleaseError, match="Croissant validation failed"):
        validate_croissant(bad)


def test_hf_dataset_loads(built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain `datasets.load_dataset(<release dir>)` reads the card's YAML: typed columns, media that decode
    anywhere (embedded), audio that needs no torchcodec."""
    import datasets
    from datasets import Audio
    from datasets import Image as HFImage

    work, rel = built
    card = (rel / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["configs"][0]["data_files"] == [{"split": "test", "path": "hf/instances.parquet"}]
    assert meta["license"] == "cc-by-4.0" and "image-segmentation" in meta["task_categories"]

    copy = tmp_path / "moved"  # from another directory, as from the Hub: nothing may depend on paths
    shutil.copytree(rel, copy)
    monkeypatch.chdir(tmp_path)
    loaded = datasets.load_dataset(str(copy), split="test", cache_dir=str(tmp_path / "cache"))
    for ds in (loaded, load_as_hf_dataset(copy)):
        assert ds.num_rows == len(_instances(work))
        assert isinstance(ds.features["image"], HFImage) and isinstance(ds.features["mask"], HFImage)
        assert isinstance(ds.features["audio"], Audio) and ds.features["audio"].sampling_rate == 16000
    bbox = {Path(e["image"]).stem: e["gt_box"] for e in json.loads((rel / "is4_bbox.json").read_text())}
    # Another release of the same name in the same datasets cache: its own rows, not the first one's.
    other = tmp_path / "other" / copy.name
    shutil.copytree(rel, other)
    _drop_one_image(other)
    cache = str(tmp_path / "shared-cache")
    first = datasets.load_dataset(str(copy), split="test", cache_dir=cache)
    second = datasets.load_dataset(str(other), split="test", cache_dir=cache)
    assert (first.num_rows, second.num_rows) == (len(_instances(work)), len(_instances(work)) - 2)

    for row in loaded:
        iid = row["instance_id"]
        assert row["image"].size == (224, 224)  # decoded for real
        with Image.open(rel / "visual_frames" / f"{iid}.jpg") as im:
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(im.convert("RGB")))
        with Image.open(rel / "gt_masks" / f"{iid}.jpg") as im:
            assert np.array_equal(np.asarray(row["mask"]), np.asarray(im))
        assert row["gt_box"] == bbox[iid]
        assert row["audio"]["path"] == f"audio_wav/{iid}.wav"
        rate, samples = read_wav_bytes(row["audio"]["bytes"])
        assert rate == 16000 and len(samples) == 8000
        assert np.array_equal(samples, wavfile.read(rel / "audio_wav" / f"{iid}.wav")[1])


def _drop_one_image(release: Path) -> None:
    """Remove the first image's two instances from the parquet file and the card's row count."""
    table = pq.read_table(release / "hf/instances.parquet")
    first = table.column("image_id")[0].as_py()
    keep = [i for i, image in enumerate(table.column("image_id").to_pylist()) if image != first]
    pq.write_table(table.take(keep), release / "hf/instances.parquet", compression="zstd")
    card = (release / "README.md").read_text()
    n = table.num_rows
    card = card.replace(f"num_examples: {n}\n", f"num_examples: {n - 2}\n", 1)
    size = (release / "hf/instances.parquet").stat().st_size
    (release / "README.md").write_text(re.sub(r"download_size: \d+", f"download_size: {size}", card, count=1))


def test_card_config_and_figures(built: tuple[Path, Path]) -> None:
    work, rel = built
    card = (rel / "README.md").read_text()
    assert "| cello | 3 | 3 | 3 | 0 |" in card
    assert "| dog | 3 | 3 | 2 | 1 |" in card
    assert "| realistic | 2 | 4 |" in card and "| cartoon | 1 | 2 |" in card
    assert MODEL_ID in card and MODEL_REVISION in card and SAM_REVISION in card
    assert "CC BY 4.0" in card and "Localizing Visual Sounds the Hard Way" in card
    attribution = Path(is4.__file__).with_name("data").joinpath("ATTRIBUTION.md").read_text().strip()
    quoted = "\n".join(
        line[2:] if line.startswith("> ") else line[1:] for line in card.splitlines() if line.startswith(">")
    )
    assert attribution in quoted  # the packaged attribution text, verbatim (as a blockquote)
    assert "| box | oracle |" in card and "| mask | random |" in card
    assert "card/box_area.png" in card and "card/categories.png" in card and "card/samples.png" in card
    for fig in ("card/box_area.png", "card/categories.png", "card/samples.png"):
        with Image.open(rel / fig) as im:
            assert im.format == "PNG" and "Software" not in im.info
    with Image.open(rel / "card/samples.png") as im:  # the gallery: each object of an image in a colour of its own
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    for colour in ((0xE8, 0x47, 0x4C), (0x3B, 0x8B, 0xD9)):
        assert (pixels == colour).all(axis=1).sum() > 100
    assert "The first 3 images by id" in card

    config_text = (rel / "build-config.yaml").read_text()
    assert yaml.safe_load(config_text) == BUILD_CONFIG
    assert f"{MODEL_ID} @ {MODEL_REVISION}" in config_text and SAM_REVISION in config_text


def test_figures_are_byte_identical_across_processes(tmp_path: Path) -> None:
    areas = [0.05, 0.1, 0.12, 0.3, 0.31, 0.5]
    here = box_area_figure(areas)
    code = (
        "import sys; from is4.pipeline.release import box_area_figure; "
        f"sys.stdout.buffer.write(box_area_figure({areas!r}))"
    )
    there = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout
    assert here == there and here[:8] == b"\x89PNG\r\n\x1a\n"
    assert box_area_figure(areas + [0.9]) != here


def test_release_refuses_a_wrong_sample_rate(tmp_path: Path) -> None:
    work = matched_workdir(tmp_path / "work")
    clip = read_manifest(work, "instances")["audio_path"].iloc[0]
    wavfile.write(work / clip, 22050, np.zeros(100, dtype=np.int16))
    with pytest.raises(ReleaseError, match="22050 Hz"):
        build_release(work, CFG, BUILD_CONFIG)
    assert not (work / "releases" / NAME).exists()
    assert [p for p in (work / "releases").iterdir()] == []  # the staging directory is gone


def test_release_refuses_a_manifest_that_does_not_project_the_decision_log(tmp_path: Path) -> None:
    """The shipped log restores a lost one: the release ships it only beside the manifest built from it."""
    work = matched_workdir(tmp_path / "work")
    append_records(work, [{"image_id": "img-x", "decision": "reject", "source": "human"}])  # no manifest rewrite
    with pytest.raises(VerificationError, match="does not project the decision log") as err:
        build_release(work, CFG, BUILD_CONFIG)
    assert "\n" not in str(err.value)
    assert [p for p in (work / "releases").iterdir()] == []  # the staging directory is gone


# --- complete IS4 items: verify checks the invariants, the card counts what match left out --------------------------


def _copy(rel: Path, tmp_path: Path) -> Path:
    copy = tmp_path / NAME
    shutil.copytree(rel, copy)
    return copy


def _edit_json(copy: Path, name: str, edit) -> None:
    path = copy / name
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set_box(copy: Path, iid: str, box: list[int]) -> None:
    def edit(entries):
        for e in entries:
            if Path(e["image"]).stem == iid:
                e["gt_box"] = box
        return entries

    _edit_json(copy, "is4_bbox.json", edit)


def _mask_extent(path: Path) -> list[int]:
    """Independently: the extent of a released mask (> 127), pixel edges."""
    mask = np.asarray(Image.open(path).convert("L")) > 127
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_a_built_release_is_complete_items_only(built: tuple[Path, Path]) -> None:
    _, rel = built
    report = verify_release(rel)
    assert report.ok and report.invalid == []
    stems = [Path(e["image"]).stem for e in json.loads((rel / "is4_bbox.json").read_text())]
    images = {s.rsplit("_", 1)[0] for s in stems}
    assert sorted(stems) == sorted(f"{i}_{c}" for i in images for c in ("cello", "dog"))


def test_verify_reports_an_image_with_one_instance(built: tuple[Path, Path], tmp_path: Path) -> None:
    from is4.pipeline.release.archive import write_checksums

    _, rel = built
    copy = _copy(rel, tmp_path)
    gone = "cello_dog_1_dog"
    for rel_path in (f"visual_frames/{gone}.jpg", f"audio_wav/{gone}.wav", f"gt_masks/{gone}.jpg"):
        (copy / rel_path).unlink()
    for name in ("is4_bbox.json", "is4_seg.json"):
        _edit_json(copy, name, lambda entries: [e for e in entries if Path(e["image"]).stem != gone])
    write_checksums(copy)  # every checksum agrees: only the invariant is broken
    report = verify_release(copy)
    assert (report.missing, report.extra, report.changed) == ([], [], [])
    assert not report.ok
    assert report.invalid == [
        "image cello_dog_1: instances cello_dog_1_cello; an IS4 item has exactly two, cello_dog_1_cello and "
        "cello_dog_1_dog"
    ]
    assert "cello_dog_1" in report.summary()

    # Inside an archive, through the command line: listed as invalid, exit 1.
    archive = tmp_path / "single.tar.gz"
    write_archive(copy, archive, NAME)
    assert verify_release(archive).invalid == report.invalid
    result = subprocess.run(
        [IS4, "release", "verify", str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "invalid: image cello_dog_1: instances cello_dog_1_cello;" in result.stdout
    assert result.stdout.strip().endswith("FAILED")


def test_verify_reports_a_box_outside_the_frame(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, rel = built
    copy = _copy(rel, tmp_path)
    iid = "cello_dog_0_dog"
    x1, y1, x2, y2 = _mask_extent(copy / f"gt_masks/{iid}.jpg")
    _set_box(copy, iid, [x1, y1, 230, y2])
    report = verify_release(copy)  # the checksum of is4_bbox.json no longer matches, and the box is reported too
    assert report.changed == ["is4_bbox.json"]
    (problem,) = report.invalid
    assert problem.startswith("is4_bbox.json[") and iid in problem and "not inside the 224×224 frame" in problem
    _set_box(copy, iid, [-1, y1, x2, y2])
    assert "not inside the 224×224 frame" in verify_release(copy).invalid[0]
    _set_box(copy, iid, [x1, y1, x1, y2])  # empty
    assert "not inside the 224×224 frame" in verify_release(copy).invalid[0]


def test_verify_reports_a_box_that_is_not_its_mask_s_extent(built: tuple[Path, Path], tmp_path: Path) -> None:
    from is4.pipeline.release.archive import write_checksums

    _, rel = built
    copy = _copy(rel, tmp_path)
    iid = "cello_dog_2_cello"
    x1, y1, x2, y2 = _mask_extent(copy / f"gt_masks/{iid}.jpg")
    _set_box(copy, iid, [x1 + 1, y1 - 1, x2 + 1, y2])  # within rounding
    write_checksums(copy)
    assert verify_release(copy).ok
    _set_box(copy, iid, [x1, y1, x2 + 2, y2])  # two pixels too wide
    write_checksums(copy)
    report = verify_release(copy)
    assert report.invalid == [
        f"is4_bbox.json[4] {iid}: gt_box {[x1, y1, x2 + 2, y2]} is not its mask's extent {[x1, y1, x2, y2]} (±1 px)"
    ]
    # An empty mask, and the frame size the shipped build config declares.
    Image.new("L", (224, 224), 0).save(copy / f"gt_masks/{iid}.jpg")
    write_checksums(copy)
    assert verify_release(copy).invalid == [f"is4_bbox.json[4] {iid}: mask {iid}.jpg is empty"]
    config = yaml.safe_load((copy / "build-config.yaml").read_text())
    config["release"]["image_size"] = 256
    (copy / "build-config.yaml").write_text(yaml.safe_dump(config))
    invalid = verify_release(copy).invalid
    assert len(invalid) == 2 * len(json.loads((copy / "is4_bbox.json").read_text()))  # frame and mask of each
    assert all("not 256×256" in p for p in invalid)


def test_the_card_counts_the_images_match_left_out(tmp_path: Path) -> None:
    work = make_workdir(tmp_path / "work")
    empty_mask(work, "cello_dog_1_dog")
    drop_annotation(work, "cello_dog_2_cello")
    run_match(work, MatchConfig(), SEED)
    rel = build_release(work, CFG, BUILD_CONFIG)
    card = (rel / "README.md").read_text()
    assert "| accepted images left out (not complete items) | 2 |" in card
    assert "2 accepted images were left out" in card
    assert "| `empty-mask: dog` | 1 |" in card and "| `missing-annotation: cello` | 1 |" in card
    assert "| images | 1 |" in card and "| instances (image + one object's audio) | 2 |" in card
    assert verify_release(rel).ok

    complete = (tmp_path / "complete").resolve()
    shutil.copytree(work, complete, ignore=shutil.ignore_patterns("releases"))
    # A report that is not the instances manifest's (match re-run elsewhere, or lost) is refused.
    report = json.loads((complete / "reports/match.json").read_text())
    (complete / "reports/match.json").write_text(json.dumps({**report, "instances_sha256": "0" * 64}))
    with pytest.raises(ReleaseError, match=r"match.json is not the report of .*instances.parquet.*re-run match"):
        build_release(complete, CFG, BUILD_CONFIG)
    (complete / "reports/match.json").unlink()
    with pytest.raises(ReleaseError, match=r"match.json: missing.*re-run match"):
        build_release(complete, CFG, BUILD_CONFIG)


def test_card_says_when_nothing_was_left_out(built: tuple[Path, Path]) -> None:
    _, rel = built
    card = (rel / "README.md").read_text()
    assert "| accepted images left out (not complete items) | 0 |" in card
    assert "No accepted image was left out." in card


@pytest.mark.parametrize("protrusion", [False, True], ids=["blob", "thin-protrusion"])
def test_shrunk_masks_keep_thin_parts_and_their_box(tmp_path: Path, protrusion: bool) -> None:
    """512 → 224: nearest neighbour would drop a 1-px-thin part and leave the box wider than the shipped mask."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        mask = np.zeros((512, 512), np.uint8)
        x1, y1 = rng.integers(20, 200, size=2)
        x2, y2 = x1 + rng.integers(40, 200), y1 + rng.integers(40, 200)
        mask[y1:y2, x1:x2] = 255
        if protrusion:  # a one-pixel-wide arm leaving the blob to the right
            row, reach = rng.integers(y1, y2), rng.integers(x2 + 10, 500)
            mask[row, x2:reach] = 255
        path = tmp_path / f"mask{trial}.png"
        Image.fromarray(mask).save(path)
        ys, xs = np.nonzero(mask)
        box = scale_box([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], 512, 512, 224)
        shipped = np.asarray(Image.open(io.BytesIO(mask_jpeg(path, 512, 512, 224, f"i{trial}"))).convert("L")) > 127
        sy, sx = np.nonzero(shipped)
        extent = [sx.min(), sy.min(), sx.max() + 1, sy.max() + 1]
        assert np.abs(np.subtract(extent, box)).max() <= 1, (trial, extent, box)


def test_shipped_baselines_are_the_scores_eval_would_compute(built: tuple[Path, Path]) -> None:
    """`baselines.json` lets `is4 eval` show the baselines without scoring them again: it must equal a fresh score."""
    from is4.pipeline.evaluation.evaluate import score_baselines, shipped_baselines
    from is4.pipeline.evaluation.formats import load_ground_truth

    _, rel = built
    for gt in ("box", "mask"):
        truth = load_ground_truth(rel, gt, benchmark="is4")
        fresh = {kind: scored.summary for kind, scored in score_baselines(truth).items()}
        assert shipped_baselines(truth, "reference") == json.loads(json.dumps(fresh))
        assert shipped_baselines(truth, "exact-k") is None  # scored with another protocol: computed afresh
