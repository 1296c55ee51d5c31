"""The compressible onboard models behind one interface (:class:`~ground.compress.tasks.base.Task`)."""
from __future__ import annotations

from engines.errors import UserError

#: Model name in a recipe -> ``module:Class``.
TASKS = {"cloud": "ground.compress.tasks.cloud:CloudTask",
         "landcover": "ground.compress.tasks.landcover:LandcoverTask",
         "anomaly": "ground.compress.tasks.anomaly:AnomalyTask"}


def make_task(name: str):
    """A new task instance for a model name (``UserError`` listing the names if unknown)."""
    import importlib

    if name not in TASKS:
        raise UserError(f"unknown model {name!r} in the recipe; choose one of {sorted(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
