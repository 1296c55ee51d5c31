"""Update compressors, one file each, behind :class:`~onboard.fl.compressors.base.Compressor`.

``make_compressor("topk", ratio=0.01)`` builds one by name; :data:`COMPRESSORS` lists the names.
"""
from __future__ import annotations

from typing import Dict, Type

from engines.errors import UserError
from onboard.fl.compressors.base import Compressor
from onboard.fl.compressors.dense import DenseCompressor
from onboard.fl.compressors.dgc import DGCCompressor
from onboard.fl.compressors.qsgd import Int8Compressor, QSGDCompressor
from onboard.fl.compressors.randomk import RandomKCompressor
from onboard.fl.compressors.rsdgc import RSDGCCompressor
from onboard.fl.compressors.topk import TopKCompressor

COMPRESSORS: Dict[str, Type[Compressor]] = {
    cls.name: cls for cls in (DenseCompressor, TopKCompressor, RandomKCompressor, DGCCompressor,
                              QSGDCompressor, Int8Compressor, RSDGCCompressor)
}

__all__ = ["COMPRESSORS", "Compressor", "DGCCompressor", "DenseCompressor", "Int8Compressor", "QSGDCompressor",
           "RSDGCCompressor", "RandomKCompressor", "TopKCompressor", "make_compressor"]


def make_compressor(name: str, **options) -> Compressor:
    """A new compressor (one per client) by its name, e.g. ``make_compressor("rsdgc", ratio=0.01)``."""
    try:
        cls = COMPRESSORS[name]
    except KeyError:
        raise UserError(f"unknown compressor {name!r}; available: {', '.join(sorted(COMPRESSORS))}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"compressor {name!r}: {exc}; see help(onboard.fl.compressors.{cls.__module__.split('.')[-1]})") \
            from None
