"""`is4 release push`'s offline part: what it would upload, and the refusals (no token, bad repo id, a release that
does not verify). The upload itself is huggingface_hub's `create_commit`, not exercised offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from is4.pipeline.release import ReleaseError, build_release
from is4.pipeline.release.push import check_repo_id, commit_operations, hub_token, plan_push
from tests.support.matched import BUILD_CONFIG, CFG, matched_workdir


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = matched_workdir(tmp_path_factory.mktemp("push") / "work")
    return build_release(work, CFG, BUILD_CONFIG)


def test_the_commit_uploads_every_release_file_and_removes_stale_ones(release: Path) -> None:
    plan = plan_push(release, "is4-org/is4", private=True, revision="v0.1.0")
    on_disk = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())
    assert plan.files == on_disk
    assert {"README.md", "hf/instances.parquet", "croissant.json", "SHA256SUMS", "is4_bbox.json"} <= set(plan.files)
    assert plan.private and plan.revision == "v0.1.0"

    ops = commit_operations(plan, remote_files=[".gitattributes", "README.md", "old/stale.parquet"])
    adds = [op for op in ops if isinstance(op, CommitOperationAdd)]
    deletes = [op for op in ops if isinstance(op, CommitOperationDelete)]
    assert [op.path_in_repo for op in adds] == on_disk
    assert all(Path(str(op.path_or_fileobj)) == release / op.path_in_repo for op in adds)
    assert [op.path_in_repo for op in deletes] == ["old/stale.parquet"]  # .gitattributes stays


@pytest.mark.parametrize(
    ("repo_id", "reason"),
    [("is4", "not ORG/NAME"), ("a/b/c", "not ORG/NAME"), ("org/bad--name", "--"), ("org/na me", "repo id")],
)
def test_a_bad_repo_id_is_refused(repo_id: str, reason: str) -> None:
    with pytest.raises(ReleaseError, match=reason):
        check_repo_id(repo_id)


def test_a_release_that_does_not_verify_is_not_pushed(release: Path, tmp_path: Path) -> None:
    copy = tmp_path / release.name
    shutil.copytree(release, copy)
    (copy / "is4_bbox.json").write_text("[]\n")
    with pytest.raises(ReleaseError, match=r"not pushed, the release does not verify: .*changed: is4_bbox.json"):
        plan_push(copy, "is4-org/is4")


def test_no_token_is_refused_with_how_to_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ReleaseError, match=r"no Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        hub_token()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert hub_token() == "hf_secret"
