"""Numbered exit codes of the onboard daemon, each with help text (``satedge onboard exit-codes``).

A supervisor (systemd, the simulator) restarts the daemon on every code except ``OK``,
``CONFIG`` and ``RESTART_LIMIT`` (systemd: ``RestartPreventExitStatus=2 21``).
"""
from __future__ import annotations

from typing import Dict, Tuple

OK = 0
INTERNAL = 1
CONFIG = 2
BUNDLE = 3
DRAIN_TIMEOUT = 10
BIND_FAILED = 11
OUTBOX = 12
TELEMETRY = 13
HEALTH_RESTART = 20
RESTART_LIMIT = 21

EXIT_CODES: Dict[int, Tuple[str, str]] = {
    OK: ("ok", "Clean shutdown: every accepted frame was processed or accounted for and its result sent."),
    INTERNAL: ("internal error", "A bug in satedge; the log has the traceback. Please report it."),
    CONFIG: ("configuration error", "The config file is missing, unreadable or holds bad values; the message says which key."),
    BUNDLE: ("bundle error", "An engine bundle is missing, tampered with or does not match its manifest or pipeline; "
             "reinstall it or fix the pipeline section."),
    DRAIN_TIMEOUT: ("drain timeout", "Shutdown could not send every result within drain_timeout_s (no receiver "
                    "connected?); the unsent results stay in <workdir>/outbox.sqlite and go down after the next start."),
    BIND_FAILED: ("bind failed", "An endpoint could not be bound (address in use?); change the endpoint in the config."),
    OUTBOX: ("outbox error", "<workdir>/outbox.sqlite cannot be opened (disk full, read-only, damaged); free space or "
             "move the damaged file aside, then restart."),
    TELEMETRY: ("telemetry error", "The telemetry source of the power policy is unavailable (jtop without a Jetson or "
                "its service); pick another telemetry.source or start the jtop service."),
    HEALTH_RESTART: ("health restart", "A stage stalled or kept failing and could not be restarted in place; the daemon "
                     "exits so that its supervisor restarts it. Counted in <workdir>/health.json."),
    RESTART_LIMIT: ("restart limit", "health.max_daemon_restarts restarts (health restarts or unclean exits) happened "
                    "within health.restart_window_s; the daemon refuses to start so it cannot loop. Read "
                    "<workdir>/health.json and the logs, fix the cause, then delete health.json (or send health_reset)."),
}


def describe() -> str:
    """A table of every exit code and what to do about it."""
    return "\n".join(f"{code:>3}  {name:<20} {text}" for code, (name, text) in sorted(EXIT_CODES.items()))
