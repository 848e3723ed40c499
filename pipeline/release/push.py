"""Publish a verified release to a Hugging Face dataset repository (`is4 release push`).

The upload is one `HfApi.create_commit`: every file of the release directory (the card, whose YAML block makes
`datasets.load_dataset("<repo id>")` return the instances, the parquet file, the official layout, Croissant,
checksums), and the deletion of files a previous push left that this release no longer has. The token comes from
where `huggingface_hub` looks (`HF_TOKEN`, `hf auth login`'s stored token) and is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from is4.pipeline.release.archive import verify_release
from is4.pipeline.release.layout import ReleaseError


@dataclass(frozen=True)
class PushPlan:
    """What `push_release` uploads: the release directory, the repository, and the files (relative paths)."""

    root: Path
    repo_id: str
    files: list[str]
    private: bool
    revision: str | None


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a Hub dataset id `ORG/NAME` (huggingface_hub's rules), else ReleaseError saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise ReleaseError(f"repo id {repo_id!r} is not ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ReleaseError(f"repo id {repo_id!r}: {exc}") from None
    return repo_id


def plan_push(release_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> PushPlan:
    """Check the repo id and the release (every checksum and item must verify) and list the files to upload."""
    check_repo_id(repo_id)
    root = Path(release_dir)
    if not root.is_dir():
        raise ReleaseError(f"{root}: no such release directory")
    report = verify_release(root)
    if not report.ok:
        raise ReleaseError(f"{root}: not pushed, the release does not verify: {report.summary()}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return PushPlan(root=root, repo_id=repo_id, files=files, private=private, revision=revision)


def hub_token() -> str:
    """The Hugging Face token from the usual places, or ReleaseError saying how to provide one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ReleaseError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    return token


def commit_operations(plan: PushPlan, remote_files: list[str] | None = None) -> list[Any]:
    """The commit: an add per release file, a delete per file of the repository the release does not have."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[Any] = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(plan.root / rel)) for rel in plan.files]
    keep = set(plan.files) | {".gitattributes"}
    ops += [CommitOperationDelete(path_in_repo=rel) for rel in sorted(set(remote_files or ()) - keep)]
    return ops


def push_release(plan: PushPlan, token: str, api: Any = None) -> str:
    """Create the dataset repository (and branch `revision`) if needed and upload the release in one commit;
    returns the commit's URL."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    if plan.revision:
        api.create_branch(plan.repo_id, branch=plan.revision, repo_type="dataset", exist_ok=True)
    remote = api.list_repo_files(plan.repo_id, repo_type="dataset", revision=plan.revision)
    commit = api.create_commit(
        plan.repo_id,
        operations=commit_operations(plan, remote),
        commit_message=f"IS4 release {plan.root.name}",
        repo_type="dataset",
        revision=plan.revision,
    )
    return str(commit.commit_url)
