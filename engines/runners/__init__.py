"""Runners: one module per backend behind the ``Runner`` protocol of ``engines.runners.base``.

``runner_for`` picks a backend by name and imports its module only then, so heavy optional
dependencies (onnxruntime, tensorrt, cuda-python, pycuda) load only when that backend is used,
and even then only in ``activate()``.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Union

from engines.bundle import Bundle
from engines.errors import UserError
from engines.runners.base import Runner

BACKENDS = ("onnxrt", "tensorrt", "reference")


def runner_for(bundle: Union[Bundle, str, "os.PathLike[str]"], backend: str = "onnxrt", **kw: Any) -> Runner:
    """Return an inactive runner for ``bundle`` on ``backend``.

    Parameters
    ----------
    bundle : Bundle or path
        An opened bundle, or a bundle directory (opened and verified here).
    backend : str, optional
        One of ``BACKENDS``; ``"onnxrt"`` by default.
    **kw
        Passed to the backend's runner: onnxrt ``providers``, ``intra_op_threads``; tensorrt ``plan``,
        ``precision``, ``dla_core``, ``buffer_library``, ``device``; all take ``name``.

    Raises
    ------
    UserError
        If the backend is unknown.
    """
    if backend not in BACKENDS:
        raise UserError("unknown runner backend %r; available: %s." % (backend, ", ".join(BACKENDS)))
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    kw.setdefault("name", "%s:v%d:%s" % (bundle.manifest.name, bundle.manifest.version, backend)
                  if backend != "onnxrt" else "%s:v%d" % (bundle.manifest.name, bundle.manifest.version))
    if backend == "tensorrt":
        from engines.runners.tensorrt import TensorRTRunner as cls
        first: Any = bundle
    elif backend == "reference":
        from engines.runners.reference import ReferenceRunner as cls
        first = bundle
    else:
        from engines.runners.onnxrt import OnnxRuntimeRunner as cls
        first = bundle.model_path
    takes = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bundle", "model")]
    unknown = sorted(set(kw) - set(takes))
    if unknown:
        raise UserError("runner backend %r does not take %s; it takes %s." % (backend, ", ".join(unknown),
                                                                             ", ".join(takes)))
    return cls(first, **kw)


__all__ = ["BACKENDS", "Runner", "runner_for"]
