"""One accelerated simulation clock shared by every process of a run.

Simulated time is seconds from the contact plan's epoch. A `SimClock` maps wall time ``w`` (Unix
seconds, ``time.time()``) to sim time ``start_s + (w - wall_start) * factor``. Every process of a
run rebuilds the same mapping from ``$SATEDGE_SIM_CLOCK`` (a JSON object written by `to_env`),
so the daemon, the ground station and the link emulator agree on "now" without talking to each
other. With ``factor=1`` and no ``start_s`` the clock is plain wall time since the epoch, which is
what a hardware-in-the-loop run against the real sky wants.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Dict, Mapping, Optional

from engines.errors import UserError

ENV_VAR = "SATEDGE_SIM_CLOCK"


class SimClock:
    """An accelerated clock: sim seconds since the plan epoch, running ``factor`` times wall time.

    Parameters
    ----------
    epoch_unix : float
        The plan epoch (sim time 0) as Unix seconds; `unix_now` adds it back.
    factor : float, optional
        Sim seconds per wall second (600: a 10-minute pass lasts 1 s). 1 is real time.
    wall_start : float, optional
        The wall time (Unix s) at which the clock reads ``start_s``; default: now.
    start_s : float, optional
        Sim time at ``wall_start``. Default: ``wall_start - epoch_unix`` when ``factor == 1``
        (plain wall time) and 0 otherwise (an accelerated run starts at the plan epoch).
    """

    def __init__(self, epoch_unix: float = 0.0, factor: float = 600.0, wall_start: Optional[float] = None,
                 start_s: Optional[float] = None) -> None:
        if not (isinstance(factor, (int, float)) and factor > 0):
            raise UserError(f"SimClock factor must be a positive number of sim seconds per wall second; got {factor!r}")
        self.epoch_unix = float(epoch_unix)
        self.factor = float(factor)
        self.wall_start = float(time.time() if wall_start is None else wall_start)
        if start_s is None:
            start_s = self.wall_start - self.epoch_unix if self.factor == 1.0 else 0.0
        self.start_s = float(start_s)

    def __repr__(self) -> str:
        return (f"SimClock(epoch_unix={self.epoch_unix!r}, factor={self.factor!r}, "
                f"wall_start={self.wall_start!r}, start_s={self.start_s!r})")

    # ------------------------------------------------------------------ time
    def now(self) -> float:
        """Sim seconds since the plan epoch."""
        return self.sim_at(time.time())

    def unix_now(self) -> float:
        """The simulated instant as Unix seconds (epoch + `now`)."""
        return self.epoch_unix + self.now()

    def sim_at(self, wall: float) -> float:
        """Sim time at wall time ``wall`` (Unix seconds)."""
        return self.start_s + (wall - self.wall_start) * self.factor

    def wall_at(self, sim_t: float) -> float:
        """Wall time (Unix seconds) at which the clock reads ``sim_t``."""
        return self.wall_start + (sim_t - self.start_s) / self.factor

    def wall_duration(self, sim_dt: float) -> float:
        """Wall seconds that ``sim_dt`` sim seconds take."""
        return sim_dt / self.factor

    def sleep_until(self, sim_t: float, stop: Optional[threading.Event] = None) -> bool:
        """Block until the clock reads ``sim_t`` (returns at once if it already has).

        Parameters
        ----------
        stop : threading.Event, optional
            Wake early when it is set.

        Returns
        -------
        bool
            True when ``sim_t`` was reached, False when ``stop`` woke the sleeper first.
        """
        delay = self.wall_at(sim_t) - time.time()
        if delay <= 0:
            return True
        if stop is None:
            time.sleep(delay)
            return True
        return not stop.wait(delay)

    def sleep(self, sim_dt: float, stop: Optional[threading.Event] = None) -> bool:
        """Sleep ``sim_dt`` sim seconds (see `sleep_until`)."""
        return self.sleep_until(self.now() + sim_dt, stop)

    # ------------------------------------------------------------------ sharing
    def to_dict(self) -> Dict[str, float]:
        """The four numbers that define the clock (JSON-serialisable)."""
        return {"epoch_unix": self.epoch_unix, "factor": self.factor, "wall_start": self.wall_start,
                "start_s": self.start_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SimClock":
        """Rebuild a clock from `to_dict` output."""
        try:
            return cls(float(d["epoch_unix"]), float(d["factor"]), float(d["wall_start"]), float(d["start_s"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a SimClock description: {dict(d)!r} ({e!r}); expected the keys "
                            "epoch_unix, factor, wall_start, start_s (see SimClock.to_dict)") from None

    def to_env(self, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Put the clock into ``env`` (default: a copy of ``os.environ``) as ``$SATEDGE_SIM_CLOCK``."""
        env = dict(os.environ) if env is None else env
        env[ENV_VAR] = json.dumps(self.to_dict())
        return env

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, default: Optional["SimClock"] = None
                 ) -> Optional["SimClock"]:
        """The clock in ``$SATEDGE_SIM_CLOCK`` (of ``env``, default ``os.environ``), else ``default``."""
        raw = (os.environ if env is None else env).get(ENV_VAR)
        if not raw:
            return default
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise UserError(f"${ENV_VAR} is not JSON ({e}); it should be written by SimClock.to_env") from None
        return cls.from_dict(d)

    @classmethod
    def wall(cls) -> "SimClock":
        """Plain wall time: factor 1, epoch at the Unix epoch (``now() == time.time()``)."""
        return cls(0.0, 1.0)
