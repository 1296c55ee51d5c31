"""The sensor emulator refuses a bad endpoint or an unknown malformed kind with one line, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_bad_endpoint_is_a_user_error_naming_it():
    from sim.sensor import SensorEmulator
    with pytest.raises(UserError, match=r"cannot connect the sensor to 'notanendpoint'.*tcp://"):
        SensorEmulator("notanendpoint")


@pytest.mark.parametrize("args, expect", [
    (["-m", "satedge_cli", "sim", "sensor", "--endpoint", "notanendpoint"], "cannot connect the sensor"),
    (["-m", "sim.sensor", "--endpoint", "nope://x", "--out", "unused.json"], "cannot connect the sensor"),
    (["-m", "sim.sensor", "--endpoint", "tcp://127.0.0.1:9", "--bad", "gremlins", "--out", "x.json"],
     "unknown kind(s) gremlins"),
])
def test_command_lines_exit_2_with_one_clear_line(tmp_path, args, expect):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
