"""A short loopback load test of the real server (benchmarks/serve_load.py): zero errors, bounded RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_load_has_no_errors_and_bounded_rss() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--duration", "15", "--warmup", "4",
                           "--clients", "4", "--json"], capture_output=True, text=True, env=env, timeout=240)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["requests"] > 500 and report["text"] > 0 and report["image"] > 0, report
    assert report["errors"] == 0, report
    assert report["rss_growth_mb_per_1k_after_warmup"] <= report["max_growth_mb_per_1k"], report
    assert proc.returncode == 0, proc.stderr[-2000:]
