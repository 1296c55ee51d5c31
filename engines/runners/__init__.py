"""Runners: one module per backend behind the ``Runner`` protocol of ``engines.runners.base``.

``runner_for`` picks a backend by name and imports its module only then, so heavy optional
dependencies (onnxruntime, tensorrt) load only when that backend is used.
"""
from __future__ import annotations

import os
from typing import Any, Union

from engines.bundle import Bundle
from engines.errors import UserError
from engines.runners.base import Runner

BACKENDS = ("onnxrt", "tensorrt", "reference")
_NOT_YET = ("tensorrt", "reference")


def runner_for(bundle: Union[Bundle, str, "os.PathLike[str]"], backend: str = "onnxrt", **kw: Any) -> Runner:
    """Return an inactive runner for ``bundle`` on ``backend``.

    Parameters
    ----------
    bundle : Bundle or path
        An opened bundle, or a bundle directory (opened and verified here).
    backend : str, optional
        One of ``BACKENDS``; ``"onnxrt"`` by default.
    **kw
        Passed to the backend's runner (for onnxrt: ``providers``, ``intra_op_threads``, ``name``).

    Raises
    ------
    UserError
        If the backend is unknown or not implemented yet.
    """
    if backend not in BACKENDS:
        raise UserError("unknown runner backend %r; available: %s." % (backend, ", ".join(BACKENDS)))
    if backend in _NOT_YET:
        raise UserError("runner backend %r is not implemented yet in this satedge; use backend='onnxrt' "
                        "for now." % backend)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    kw.setdefault("name", "%s:v%d" % (bundle.manifest.name, bundle.manifest.version))
    from engines.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(bundle.model_path, **kw)


__all__ = ["BACKENDS", "Runner", "runner_for"]
