"""The walking skeleton end to end, through the real `satedge` command and real processes."""
import json
import subprocess
import sys

import pytest

KEYS = ("frames_in", "frames_processed", "frames_dropped", "frames_rejected", "cloud_accuracy",
        "int8_speedup", "latency_ms", "downlink_bytes", "downlink_bytes_saved_ratio")


@pytest.mark.slow
def test_quick_demo_writes_summary(tmp_path, shared_data):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "satedge_cli", "demo", "--quick", "--frames", "6",
                           "--out", str(tmp_path / "demo"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(out.read_text())
    for key in KEYS:
        assert key in s, key
    assert set(s["latency_ms"]) >= {"p50", "p99"}
    assert s["frames_in"] == s["frames_processed"] + s["frames_dropped"] + s["frames_rejected"]
    assert s["frames_processed"] == 6 and s["results_received"] == 6
    assert s["frames_rejected"] == s["frames_in"] - 6 > 0          # every malformed kind was rejected
    assert s["cloud_accuracy"] >= 0.9
    assert 0.0 <= s["downlink_bytes_saved_ratio"] < 1.0
    assert "processed + dropped + rejected == in" in proc.stdout
