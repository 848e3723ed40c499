"""Where a build's clips come from: the configured csv, or the demo media served from a loopback server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from is4.config import BuildConfig, ConfigError
from is4.pipeline.demo.demo_media import make_demo_media
from is4.pipeline.demo.media_server import MediaServer

DEMO_DIR = "demo"


@dataclass(frozen=True)
class IngestSource:
    """The csv to ingest and, for the demo, the url template of the server that holds its videos."""

    csv_path: Path
    url_template: str | None = None


@contextlib.contextmanager
def open_ingest_source(cfg: BuildConfig, workdir: Path) -> Iterator[IngestSource]:
    """Yield the build's ingest source; for demo media, make it under `WORK/demo` and serve it meanwhile."""
    demo = cfg.ingest.demo_media
    if not demo.enabled:
        if cfg.ingest.csv is None:
            raise ConfigError("ingest.csv: no csv given and demo_media is not enabled")
        yield IngestSource(Path(cfg.ingest.csv))
        return
    media = make_demo_media(
        workdir / DEMO_DIR,
        demo.labels,
        clips_per_label=demo.clips_per_label,
        source_seconds=demo.source_seconds,
        seed=cfg.seed,
        include_faults=demo.include_faults,
    )
    with MediaServer(media.video_dir) as server:
        yield IngestSource(media.csv_path, server.url_template())
