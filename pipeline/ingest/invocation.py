"""One `is4 ingest` invocation: its command-line overrides applied to a config, and the command that continues it.

The CLI only parses options; what they mean for the `ingest` section, and how the same run is started again (for
`is4 ingest --status` and the stop message), lives here beside the stage.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from is4.config import BuildConfig, parse_config

__all__ = ["IngestInvocation"]

_NAMED_LABEL_SETS = ("all", "vggss")


@dataclass(frozen=True)
class IngestInvocation:
    """The options of one `is4 ingest` run; `None` means "as the config says"."""

    csv: Path
    workdir: Path
    config: Path | None = None
    url_template: str | None = None
    workers: int | None = None
    splits: list[str] | None = None
    labels: str | None = None
    per_class_cap: int | None = None
    id_list: Path | None = None
    seed: int | None = None
    export: bool | None = None
    shard: str | None = None

    def apply(self, base: BuildConfig) -> BuildConfig:
        """`base` with this run's overrides, validated like a config file."""
        data = base.model_dump(mode="json")
        section = data["ingest"]
        overrides = {
            ("download", "url_template"): self.url_template,
            ("download", "workers"): self.workers,
            ("subset", "splits"): self.splits,
            ("subset", "per_class_cap"): self.per_class_cap,
            ("subset", "id_list"): str(self.id_list) if self.id_list else None,
        }
        for (group, key), value in overrides.items():
            if value is not None:
                section[group][key] = value
        if self.labels is not None:
            section["subset"]["labels"] = (
                self.labels if self.labels in _NAMED_LABEL_SETS else _read_labels(Path(self.labels))
            )
        if self.export is not None:
            section["export_training_layout"] = self.export
        if self.seed is not None:
            data["seed"] = self.seed
        cfg = parse_config(data, "command line")
        # The session's secrets are not in the dump (they never leave the config object): carry them over.
        secrets = {k: getattr(base.ingest.download, k) for k in ("cookies_file", "proxy", "extractor_args")}
        download = cfg.ingest.download.model_copy(update=secrets)
        return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"download": download})})

    def continue_command(self) -> str:
        """The shell command that continues this run: absolute paths, no secrets."""
        argv = ["is4", "ingest", "--csv", str(self.csv.resolve()), "--workdir", str(self.workdir.resolve())]
        labels = self.labels
        options = {
            "--config": self.config and self.config.resolve(),
            "--url-template": self.url_template,
            "--workers": self.workers,
            "--labels": labels and (labels if labels in _NAMED_LABEL_SETS else Path(labels).resolve()),
            "--per-class-cap": self.per_class_cap,
            "--id-list": self.id_list and self.id_list.resolve(),
            "--seed": self.seed,
        }
        argv += [str(v) for k, val in options.items() if val is not None for v in (k, val)]
        argv += [v for s in self.splits or [] for v in ("--split", s)]
        argv += [] if self.export is None else ["--export" if self.export else "--no-export"]
        argv += [] if self.shard is None else ["--shard", self.shard]
        return shlex.join(argv)

    @property
    def lock_part(self) -> str:
        """Parts of one csv may be ingested side by side into one work directory: each holds only its part."""
        return f"ingest of {self.csv.resolve()}"


def _read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
