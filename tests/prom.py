"""Helpers to run the real Prometheus (Debian's 2.42) and promtool on 127.0.0.1 in tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def require_prometheus() -> None:
    """Fail (not skip) without the binaries: .ci/run installs Debian's prometheus package."""
    if not Path(PROMETHEUS).exists() or not Path(PROMTOOL).exists():
        pytest.fail("prometheus/promtool not installed: run `apt-get install prometheus` (.ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server process with its own data dir and config ($SELF_PORT: its own port)."""

    def __init__(self, workdir: Path, config: str, *, data_dir: Path | None = None, extra: list[str] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(config.replace("$SELF_PORT", str(self.port)))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={data_dir or workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=100y", "--log.level=warn", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=60) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> dict:
        """{labels-tuple: [(t, value-string), ...]}"""
        data = self.api("/api/v1/query_range", query=expr, start=start_s, end=end_s, step=step_s)
        return {tuple(sorted(r["metric"].items())): r["values"] for r in data["result"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def promtool_backfill(openmetrics: Path, out_dir: Path, max_block_duration: str | None = None) -> None:
    """`promtool tsdb create-blocks-from openmetrics` into out_dir."""
    extra = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", *extra, str(openmetrics), str(out_dir)],
                   check=True, capture_output=True)
