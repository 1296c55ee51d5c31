"""Numbered exit codes of the onboard daemon, each with help text (``satedge onboard exit-codes``)."""
from __future__ import annotations

from typing import Dict, Tuple

OK = 0
INTERNAL = 1
CONFIG = 2
BUNDLE = 3
DRAIN_TIMEOUT = 10
BIND_FAILED = 11

EXIT_CODES: Dict[int, Tuple[str, str]] = {
    OK: ("ok", "Clean shutdown: every accepted frame was processed or accounted for and its result sent."),
    INTERNAL: ("internal error", "A bug in satedge; the log has the traceback. Please report it."),
    CONFIG: ("configuration error", "The config file is missing, unreadable or holds bad values; the message says which key."),
    BUNDLE: ("bundle error", "The engine bundle is missing, tampered with or does not match its manifest; reinstall it."),
    DRAIN_TIMEOUT: ("drain timeout", "Shutdown could not send every result within drain_timeout_s (no receiver connected?); "
                    "the count of unsent results is in the log."),
    BIND_FAILED: ("bind failed", "An endpoint could not be bound (address in use?); change the endpoint in the config."),
}


def describe() -> str:
    """A table of every exit code and what to do about it."""
    return "\n".join(f"{code:>3}  {name:<20} {text}" for code, (name, text) in sorted(EXIT_CODES.items()))
