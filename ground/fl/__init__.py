"""Federated learning on the ground: aggregation strategies and a small simulation harness.

``ground.fl.strategies`` holds one file per aggregation strategy behind
:class:`ground.fl.strategies.base.Strategy`; ``docs/fl.md`` describes them.
"""
