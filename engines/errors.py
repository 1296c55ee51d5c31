"""Error types shared by every satedge side.

``UserError`` is for problems the user can fix (bad input, bad configuration, a missing file);
its message says what was asked, what was found and how to fix it. Anything else that escapes is
an internal bug. ``exit_code`` is the process exit status the ``satedge`` command uses.
"""
from __future__ import annotations


class SatedgeError(Exception):
    """Base class of every error satedge raises on purpose."""

    exit_code = 1


class UserError(SatedgeError):
    """A problem the user can fix; the message says how."""

    exit_code = 2


class BundleError(UserError):
    """An engine bundle is malformed, tampered with, or does not match its manifest."""

    exit_code = 3


class RunnerError(UserError):
    """A runner was used wrongly (inputs that do not match its spec, used before activate)."""

    exit_code = 4


class SignatureError(BundleError):
    """A bundle's signature is missing, made with a key that is not trusted, or does not verify."""

    exit_code = 3


class PlanIncompatible(BundleError):
    """A TensorRT plan was built for another TensorRT version or GPU than the one at hand."""

    exit_code = 3
