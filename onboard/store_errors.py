"""The errors of the onboard engine store.

``StoreError`` is a ``UserError``: the store cannot do what was asked, and the message names the
engine, the slot and the fix. ``RollbackRefused`` is the one kind callers most often tell apart:
rollback protection or a rollback command said no. The bundle's own ``BundleError``,
``SignatureError`` and ``PlanIncompatible`` pass through the store unchanged.
"""
from __future__ import annotations

from engines.errors import UserError

__all__ = ["RollbackRefused", "StoreError"]


class StoreError(UserError):
    """The engine store cannot do what was asked; the message names the engine, the slot and the fix."""

    exit_code = 3


class RollbackRefused(StoreError):
    """A version not above the highest ever activated was refused, or a rollback command was invalid."""
