"""A local Prometheus server (the Debian/upstream binary) for the demo and the tests.

It listens on a loopback port the kernel picks (read back from its log) and scrapes
targets given as static configs; stopped with the process that started it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tidal.core.errors import UnavailableError
from tidal.spawn import start_child

_LISTENING = re.compile(r'msg="Listening on" address=([\d.]+:\d+)')


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        interval_s: float = 1.0,
        rule_files: list[Path] | None = None,
        address: str = "127.0.0.1:0",
    ) -> None:
        self.workdir = workdir
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": f"{round(interval_s * 1000)}ms",
                "evaluation_interval": f"{round(interval_s * 1000)}ms",
            },
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            config["rule_files"] = [str(p) for p in rule_files]
        self.address = address
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise UnavailableError("prometheus is not installed (Debian package 'prometheus')")
        with self.log_path.open("wb") as log:
            # Dies with this process (tidal.spawn), like the services it scrapes.
            self.process = start_child(
                [binary, f"--config.file={self.config_path}", f"--web.listen-address={self.address}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=1h"],
                env=os.environ, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self.url:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise UnavailableError(f"prometheus did not start: {self.log_path.read_text()[-2000:]}")
            if match := _LISTENING.search(self.log_path.read_text()):
                self.url = f"http://{match.group(1)}"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        if body.get("status") != "success":
            raise UnavailableError(f"prometheus {path}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step_s)["result"]

    def targets_up(self) -> dict[str, bool]:
        active = self.api("targets")["activeTargets"]
        return {t["scrapeUrl"]: t["health"] == "up" for t in active}
