"""Run the imagesync CLI in-process against a config written to a temp dir."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagesync.cli import main


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    report: dict | None

    def by_destination(self) -> dict[str, dict]:
        assert self.report is not None
        return {r["destination"]: r for r in self.report["images"]}

    def statuses(self) -> dict[str, str]:
        return {d: r["status"] for d, r in self.by_destination().items()}


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))
    return path


def run_cli(workdir: Path, config: dict[str, Any] | None, *args: str,
            name: str = "imagesync.yaml") -> CliRun:
    """``imagesync --config <config> --report <report> *args``; returns code and output."""
    argv = list(args)
    if config is not None:
        argv = ["--config", str(write_config(workdir / name, config)), *argv]
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    argv += ["--report", str(report)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's --help / errors
            code = int(e.code or 0)
    doc = json.loads(report.read_text()) if report.exists() else None
    return CliRun(code, out.getvalue(), err.getvalue(), doc)
