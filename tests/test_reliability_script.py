"""benchmarks/reliability.py end to end with tiny sizes: a real Uvicorn server on 127.0.0.1, the report's fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reliability_script_reports_no_crash_and_no_5xx(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.reliability", "--fuzz", "30", "--load", "8",
                          "--concurrency", "4", "--burst", "4", "--seed", "1", "--slow-uploads", "4", "--idle", "4",
                          "--slow-seconds", "4", "--long-windows", "6", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    fuzz, load = report["fuzz"], report["load"]
    assert fuzz["requests"] == 30 and sum(fuzz["statuses"].values()) == 30
    assert fuzz["crashes"] == 0 and fuzz["5xx"] == 0 and fuzz["4xx_without_message"] == 0, fuzz["examples"]
    assert load["requests"] == 8 and load["errors"] == 0
    assert 0 < load["p50_s"] <= load["p95_s"] and load["rss_after_warmup_mib"] > 0
    # 8 tiny-model requests after warm-up: RSS may move with allocator arenas, not grow with the requests
    assert abs(load["rss_growth_pct"]) < 20 and abs(load["rss_growth_second_half_pct"]) < 20, load
    assert len(load["rss_after_each_round_mib"]) == 5 and load["rss_after_each_round_mib"][0] == load["rss_after_warmup_mib"]
    assert report["overload"]["503"] >= 1 and report["overload"]["ok"], report["overload"]
    shutdown = report["graceful_shutdown"]
    assert shutdown["in_flight_when_signalled"] and shutdown["completed"], shutdown  # SIGTERM mid-request
    assert "RSS growth %" in run.stdout and "graceful shutdown" in run.stdout
    # issue 15's hostile clients: each scenario ran and held
    slow, cancel, bombs = report["slow_clients"], report["cancellation"], report["bombs"]
    assert slow["ok"] and slow["valid_meanwhile"]["status"] == 200 and slow["queue_held_meanwhile"] == 0, slow
    assert cancel["ok"] and cancel["timeout"]["status"] == 504, cancel
    assert [r["status"] for r in bombs["window_bomb"]] == [422] * 3 and bombs["pcm_bomb"][0]["status"] == 413, bombs
    assert bombs["ok"] and bombs["oversized_without_key"] == 401, bombs
    assert report["hostile_log"]["tracebacks"] == 0 and not report["hostile_log"]["key_logged"]
