"""Federated learning on the satellite: update compression, the wire codec and the local learner.

``onboard.fl`` never imports torch at module level: compressors and the codec work on numpy
arrays; only :mod:`onboard.fl.learner` imports torch, lazily, inside its methods. ``docs/fl.md``
describes every compressor, the byte format of the codec and the ground strategies.
"""
