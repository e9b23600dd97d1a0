"""Run one command and report its own wall time, CPU time and peak RSS.

RUSAGE_CHILDREN's maxrss is the maximum over every child a process ever waited for, so each
measured command runs under a fresh intermediary whose only child it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_RUNNER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "wall_s": wall, "cpu_s": r.ru_utime + r.ru_stime,
                  "peak_rss": r.ru_maxrss * 1024, "stdout": p.stdout, "stderr": p.stderr[-4000:]}))
"""


def measure(cmd: list[str], cwd: Path | None = None) -> dict:
    """{'wall_s', 'cpu_s', 'peak_rss', 'stdout'} of `cmd`; raises if it fails."""
    out = subprocess.run([sys.executable, "-c", _RUNNER, *cmd], capture_output=True, text=True, cwd=cwd,
                         check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {result['rc']}: {result['stderr']}")
    return result
