"""Running the real ``satedge`` command in tests and checking its one-line errors (shared by the CLI tests)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def satedge(*argv, cwd=None, timeout=300):
    """Run the ``satedge`` command with ``argv`` (in ``cwd``, default the repository); return the
    CompletedProcess (text stdout and stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "satedge_cli"] + [str(a) for a in argv], cwd=str(cwd or ROOT),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout)


def error_line(result, *names, code=2):
    """The one ``satedge: error:`` line of ``result``, checked: exit ``code``, no traceback, it names ``names``."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert result.returncode == code, both
    errors = [line for line in result.stderr.splitlines() if line.startswith("satedge: error:")]
    assert len(errors) == 1, result.stderr
    tail = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert tail == errors[0], "the error message runs over several lines:\n" + result.stderr
    for name in names:
        assert str(name) in errors[0], errors[0]
    return errors[0]
