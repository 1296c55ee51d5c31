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
    (["-m", "satedge_cli", "sim", "sensor", "--endpoint", "tcp://127.0.0.1:9", "--frames", "0"],
     "frames must be at least 1"),
    (["-m", "satedge_cli", "sim", "sensor", "--endpoint", "tcp://127.0.0.1:9", "--rate", "nan"],
     "rate must be a finite number"),
])
def test_command_lines_exit_2_with_one_clear_line(tmp_path, args, expect):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_no_daemon_at_the_endpoint_is_an_error_after_the_send_timeout():
    from sim.sensor import run
    from sim.processes import free_tcp_endpoint
    endpoint = free_tcp_endpoint()                      # nobody binds it: the frames have nowhere to go
    with pytest.raises(UserError, match="no daemon took a frame at %s within 0.5 s" % endpoint):
        run(endpoint, 40, size=64, send_timeout_s=0.5)
