"""``satedge onboard status`` / ``shutdown`` against a daemon whose control channel needs Curve keys."""
import json
import subprocess
import sys

from daemon_helpers import start_daemon, wait_for


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "satedge_cli", "onboard", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_status_and_shutdown_with_control_keys(tiny_bundle, tmp_path):
    from engines.keyfiles import generate_curve_keypair
    daemon_key, daemon_pub = generate_curve_keypair(tmp_path / "keys", "daemon")
    operator_key, operator_pub = generate_curve_keypair(tmp_path / "keys", "operator")
    _, stranger_pub = generate_curve_keypair(tmp_path / "keys", "stranger")
    proc = start_daemon(tmp_path, bundle=tiny_bundle, control_secret_key=str(daemon_key),
                        control_authorized_keys=[str(operator_pub)])
    ep = proc.settings.control_endpoint

    out = _cli("status", "--control", ep, "--control-keys", daemon_pub, operator_key)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["engine"] == {"name": "cloudscreen", "version": 1, "precision": "fp32"}, status
    assert status["frames_in"] == 0
    assert "Traceback" not in out.stderr

    # without keys a keyed daemon stays silent: the message says how to pass them
    out = _cli("status", "--control", ep, "--timeout", "1")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no reply" in out.stderr and "--control-keys" in out.stderr, out.stderr

    out = _cli("shutdown", "--control", ep, "--control-keys", daemon_pub, operator_key)
    assert out.returncode == 0, out.stderr + out.stdout
    wait_for(lambda: not proc.alive(), timeout=30, what="the daemon to exit after shutdown")
    assert proc.proc.returncode == 0
