"""Starting satedge parts as real OS processes: the daemon, the ground receiver, sensors."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

from engines.errors import UserError
from onboard.settings import DaemonSettings, write_settings


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A ``tcp://host:port`` endpoint on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def stable_tcp_endpoint(host: str = "127.0.0.1", low: int = 20000, high: int = 32000) -> str:
    """A free ``tcp://host:port`` below Linux's ephemeral range (32768+), so that no outgoing
    connection is given the port between now and the moment a process binds it."""
    import random
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return f"tcp://{host}:{port}"
    return free_tcp_endpoint(host)


def _python_env() -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (no orphans)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                        # not Linux: children may outlive a killed parent


class ManagedProcess:
    """A child process with its log file; :meth:`stop` sends SIGTERM and waits."""

    def __init__(self, name: str, argv: List[str], log_path: str, extra_env: Optional[dict] = None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**_python_env(), **(extra_env or {})},
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process log."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout``)."""
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see :func:`stop_all`)."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the process to exit by itself."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


class DaemonProcess(ManagedProcess):
    """An onboard daemon started as ``python -m onboard.daemon --config FILE``."""

    def __init__(self, settings: DaemonSettings, config_path: str, extra_env: Optional[dict] = None):
        os.makedirs(settings.workdir, exist_ok=True)
        ready = os.path.join(settings.workdir, "ready")
        if os.path.exists(ready):
            os.remove(ready)
        self.settings = settings
        write_settings(settings, config_path)
        super().__init__("daemon", [sys.executable, "-m", "onboard.daemon", "--config", config_path],
                         os.path.join(settings.workdir, "daemon.log"), extra_env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the daemon has bound its sockets; raise with its log if it died."""
        ready = os.path.join(self.settings.workdir, "ready")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(ready):
                return
            if not self.alive():
                raise UserError(f"the daemon exited with code {self.proc.returncode} before it was ready:\n"
                                f"{self.log_tail()}")
            time.sleep(0.05)
        raise UserError(f"the daemon was not ready within {timeout} s:\n{self.log_tail()}")


def stop_all(procs, grace_s: float = 30.0) -> None:
    """SIGTERM every process of ``procs`` at once, then SIGKILL those still running after ``grace_s``.

    ``None`` entries are skipped; every process is waited for (no zombies, logs closed).
    """
    procs = [p for p in procs if p is not None]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
        finally:
            p._log.close()
