"""``satedge sim run SCENARIO.yaml``: a ground station and N onboard daemons as real processes.

1. orbits, contact plan and eclipses (``sim.run_setup``), signed bundles v1 and the rollout version,
   one engine store per satellite with v1 installed;
2. one shared accelerated clock (``$SATEDGE_SIM_CLOCK``); per satellite a link emulator (thread of
   this process) between the ground station and the daemon: the uplink transfer, results down,
   acks up, only inside contact windows, with the scenario's loss, duplication and reordering;
3. the ground station process (``sim.ground_station``) uplinks the rollout bundle, receives and
   acknowledges results; each daemon process installs the bundle it receives into its store;
4. sensor emulators send a frame every ``imaging.interval_s`` of sunlit time along the ground track;
5. faults from the scenario are injected on time (``sim.scenario`` lists the kinds);
6. after ``duration_h`` every link opens for ``drain_wall_s`` so that results still on board go
   down, daemons and ground station stop, and ``summary.json``, ``events.jsonl`` and
   ``report.html`` are written (``sim.run_check`` for exactly-once delivery and recoveries).

A satellite listed under ``external`` is a daemon the runner did not start (hardware in the
loop, or a process started by hand): the runner only connects its link, sensor and monitoring to
the endpoints given there, and injects no process faults into it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import zmq

from engines.errors import UserError
from onboard.settings import DaemonSettings
from sim import run_check, run_setup
from sim.clock import ENV_VAR, SimClock
from sim.ground_station import EventLog
from sim.processes import DaemonProcess, ManagedProcess, stable_tcp_endpoint, stop_all
from sim.scenario import Scenario, fault_label
from sim.sensor import SensorEmulator


class Satellite:
    """One satellite of the run: its endpoints, daemon process (or external daemon), link and sensor."""

    def __init__(self, idx: int, name: str, run_dir: str, ext: Optional[Dict[str, Any]]):
        self.idx, self.name, self.external = idx, name, ext is not None
        self.workdir = os.path.join(run_dir, "sats", name)
        keys = ("sensor", "results", "acks", "heartbeat", "control", "uplink")
        self.eps = {k: (ext or {}).get(k) or stable_tcp_endpoint() for k in keys}
        self.proc: Optional[DaemonProcess] = None
        self.link: Any = None
        self.sensor: Optional[SensorEmulator] = None
        self.frame_id, self.next_image = 0, 0.0
        self.expect_dead = False
        self.daemon_dir = (ext or {}).get("workdir") if self.external else os.path.join(self.workdir, "daemon")

    def settings(self, sc: Scenario, bundles: Dict[str, str], eclipses: List, t0: float,
                 windows: List) -> DaemonSettings:
        data: Dict[str, Any] = {
            "store_root": os.path.join(self.workdir, "store"), "engine": run_setup.ENGINE,
            "trusted_keys": [bundles["public_key"]], "workdir": os.path.join(self.workdir, "daemon"),
            "sensor_endpoint": self.eps["sensor"], "results_endpoint": self.eps["results"],
            "ack_endpoint": self.eps["acks"], "heartbeat_endpoint": self.eps["heartbeat"],
            "control_endpoint": self.eps["control"], "intra_op_threads": 1, "heartbeat_interval_s": 0.5,
            "outbox": {"lease_s": 1.0, "windows": [list(w[:2]) for w in windows] + [[sc.duration_s, 1e12]]}, "uplink": {"endpoint": self.link.back, "scrub_interval_s": 2.0},
            "telemetry": {"source": "simulated", "time_scale": sc.factor, "t0": t0, "interval_s": 0.5,
                          "eclipses": eclipses}}
        for key, value in sc.daemon.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return DaemonSettings.from_mapping(data)

    def start(self, settings: DaemonSettings, env: Optional[Dict[str, str]] = None) -> None:
        self.proc = DaemonProcess(settings, os.path.join(self.workdir, "daemon.yaml"), extra_env=env)


class Run:
    """A constellation run in ``run_dir`` (see module doc); :meth:`execute` returns the summary."""

    def __init__(self, sc: Scenario, run_dir: str, signing_key: str = "", progress: bool = True):
        self.sc, self.dir, self.signing_key, self.progress = sc, run_dir, signing_key, progress
        os.makedirs(run_dir, exist_ok=True)
        for fn in ("events.jsonl", "runner_events.jsonl", "ground_events.jsonl", "summary.json", "ground.json"):
            if os.path.exists(os.path.join(run_dir, fn)):
                os.remove(os.path.join(run_dir, fn))
        import shutil
        shutil.rmtree(os.path.join(run_dir, "sats"), ignore_errors=True)     # every run launches new satellites
        self.t_launch = time.time()
        self.faults: List[Dict[str, Any]] = []

    def say(self, msg: str) -> None:
        if self.progress:
            print(f"[{time.time() - self.t_launch:6.1f} s] {msg}", flush=True)

    def execute(self) -> Dict[str, Any]:
        sc = self.sc
        self.say(f"scenario {sc.name}: propagating {sc.duration_h:g} h, contacts and eclipses")
        orb = run_setup.plan_orbits(sc, self.dir)
        bundles = run_setup.prepare_bundles(sc, self.dir, self.signing_key)
        self.public_key = bundles["public_key"]
        self.sats = [Satellite(i, n, self.dir, sc.external.get(i)) for i, n in enumerate(orb["names"])]
        for s in self.sats:
            if not s.external:
                run_setup.satellite_store(os.path.join(s.workdir, "store"), bundles["v1"], bundles["public_key"])
        n_local = sum(not s.external for s in self.sats)
        self.clock = SimClock(epoch_unix=0.0, factor=sc.factor, wall_start=time.time() + 3.0 + 0.7 * n_local)
        os.environ.update(self.clock.to_env({}))
        for s in self.sats:
            s.link = run_setup.make_link(sc, s.idx, orb["windows"][s.name], s.eps, s.external, self.clock).start()
        self.events = EventLog(os.path.join(self.dir, "runner_events.jsonl"), self.clock)
        self.say(f"{len(self.sats)} satellites, {sum(len(w) for w in orb['windows'].values())} passes; "
                 "starting the ground station and the daemons")
        ground = None
        try:
            ground = self._start_ground(bundles, orb)
            for s in self.sats:
                if not s.external:
                    s.start(s.settings(sc, bundles, orb["eclipses"][s.name], 0.0, orb["windows"][s.name]), self._fault_env(s))
                    self.events.emit("daemon", s.name, state="started", code=None)
            for s in self.sats:
                if s.proc is not None:
                    s.proc.wait_ready(180)
                    self.events.emit("daemon", s.name, state="ready", code=None)
                s.sensor = SensorEmulator(s.eps["sensor"])
                s.sensor.sock.setsockopt(zmq.SNDTIMEO, 200)   # a daemon that is down must not stall the run
            late = self.clock.now()
            self.say(f"all ready at sim t={late:.0f} s; running {sc.duration_s:.0f} sim s at {sc.factor:g}x "
                     f"(~{(sc.duration_s - max(0.0, late)) / sc.factor:.0f} s wall)")
            self._loop(bundles, orb)
            self.say(f"end of scenario; downlink open for up to {sc.drain_wall_s:g} s wall to empty the outboxes")
            self._drain()
        finally:
            # the daemons first (the ground station drains what they still send), all at once, SIGKILL after 30 s
            stop_all([s.proc for s in self.sats], grace_s=30)
            for s in self.sats:
                if s.sensor is not None:
                    s.sensor.close(linger_ms=0)
            stop_all([ground], grace_s=30)
            links = {s.name: s.link.stop() for s in self.sats if s.link is not None}
            self.events.close()
        return self._finish(orb, links)

    def _start_ground(self, bundles: Dict[str, str], orb: Dict[str, Any]) -> ManagedProcess:
        cfg = {"events": os.path.join(self.dir, "ground_events.jsonl"), "satellites": [
            {"name": s.name, "uplink": s.link.front, "results": s.link.endpoints_bound["res_out"],
             "acks": s.link.endpoints_bound["ack_in"], "heartbeat": s.eps["heartbeat"], "bundle_tar": bundles["tar"],
             "version": self.sc.rollout_version, "engine": run_setup.ENGINE,
             "windows_up": [list(w[:2]) for w in orb["windows"][s.name]],
             "transfer": {"rate_bps": (self.sc.link.get("up") or {}).get("rate_bps")}} for s in self.sats]}
        path = os.path.join(self.dir, "ground_station.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh, indent=1)
        return ManagedProcess("ground", [sys.executable, "-m", "sim.ground_station", "--config", path, "--out",
                                         os.path.join(self.dir, "ground.json")], os.path.join(self.dir, "ground.log"))

    def _fault_env(self, s: Satellite) -> Dict[str, str]:
        from onboard.store_install import CRASH_ENV
        for i, f in enumerate(self.sc.faults):
            if f.kind == "power_loss_install" and f.sat == s.idx and not any(x["id"] == i for x in self.faults):
                s.expect_dead = True
                return {CRASH_ENV: f.phase}
        return {}

    def _loop(self, bundles: Dict[str, str], orb: Dict[str, Any]) -> None:
        """Imaging, fault injection and restarts until the scenario's end."""
        sc = self.sc
        pending = {i: f for i, f in enumerate(sc.faults) if f.kind in ("kill_restart", "bitflip_engine")}
        for s in self.sats:
            _, resolved = run_setup.outages(sc, s.idx, orb["windows"][s.name])
            for r in resolved:
                self.faults.append(dict(r, sat=s.name, detail=fault_label(sc.faults[r["id"]], s.name)))
                self.events.emit("fault", s.name, t=r["t"], id=r["id"], fault=r["fault"], detail=self.faults[-1]["detail"])
        restarts: Dict[str, float] = {}
        while (now := self.clock.now()) < sc.duration_s:
            for s in self.sats:
                self._image(s, now, orb)
                if s.proc is not None and not s.proc.alive() and s.name not in restarts:
                    self._died(s, now, restarts)
                if s.name in restarts and now >= restarts[s.name]:
                    del restarts[s.name]
                    s.start(s.settings(sc, bundles, orb["eclipses"][s.name], now, orb["windows"][s.name]), self._fault_env(s))
                    self.events.emit("daemon", s.name, state="started", code=None)
            for i, f in list(pending.items()):
                s = self.sats[f.sat]
                if now < f.at_s or s.external or s.proc is None or not s.proc.alive():
                    continue
                if f.kind == "kill_restart":
                    s.expect_dead = True
                    s.proc.stop(timeout=5, sig=signal.SIGKILL)
                    self._record(i, s, now, t_restart=now + f.down_s)
                    restarts[s.name] = now + f.down_s
                    del pending[i]
                elif self._flip_active(s):
                    self._record(i, s, now)
                    del pending[i]
            time.sleep(0.02)

    def _died(self, s: Satellite, now: float, restarts: Dict[str, float]) -> None:
        code = s.proc.proc.returncode
        self.events.emit("daemon", s.name, state="killed" if code == -signal.SIGKILL else "exited", code=code)
        i = next((i for i, f in enumerate(self.sc.faults) if f.kind == "power_loss_install" and f.sat == s.idx
                  and not any(x["id"] == i for x in self.faults)), None)
        if i is not None:                              # the crash hook fired: that was the power loss
            self._record(i, s, now)
            restarts[s.name] = now + self.sc.faults[i].down_s
        elif not s.expect_dead:
            raise UserError(f"{s.name}'s daemon died unexpectedly (code {code}):\n{s.proc.log_tail()}")
        s.expect_dead = False

    def _record(self, i: int, s: Satellite, now: float, **extra: Any) -> None:
        f = self.sc.faults[i]
        self.faults.append(dict(id=i, fault=f.kind, sat=s.name, t=now, detail=fault_label(f, s.name), **extra))
        self.events.emit("fault", s.name, id=i, fault=f.kind, detail=self.faults[-1]["detail"])
        self.say(f"fault {i}: {self.faults[-1]['detail']} at sim t={now:.0f} s")

    def _flip_active(self, s: Satellite) -> bool:
        """Flip one bit in the active engine's model; False while the rollout version is not active yet."""
        from onboard.store import EngineStore
        store = EngineStore(os.path.join(s.workdir, "store"), trusted_keys=[self.public_key])
        v = store.versions(run_setup.ENGINE)
        if (v["active"] or 0) < self.sc.rollout_version:
            return False
        path = os.path.join(s.workdir, "store", run_setup.ENGINE, v["active_slot"], "model.onnx")
        with open(path, "r+b") as fh:
            fh.seek(os.path.getsize(path) // 2)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x10]))
        return True

    def _image(self, s: Satellite, now: float, orb: Dict[str, Any]) -> None:
        if now < s.next_image or now < 0:
            return
        s.next_image = now + self.sc.imaging.interval_s
        sunlit = not any(a <= now < b for a, b in orb["eclipses"][s.name])
        if self.sc.imaging.sunlit_only and not sunlit:
            return
        k = min(len(orb["track_t"]) - 1, int(now / self.sc.step_s))
        s.frame_id += 1
        try:
            s.sensor.send_scene(s.frame_id, self.sc.seed * 100000 + s.idx * 1000 + s.frame_id, self.sc.imaging.size)
        except Exception as exc:                      # the daemon is down and the sensor's buffer is full
            self.events.emit("image", s.name, frame_id=s.frame_id, lat=None, lon=None, sunlit=sunlit, error=str(exc))
            return
        self.events.emit("image", s.name, frame_id=s.frame_id, lat=round(float(orb["lat"][s.idx, k]), 3),
                         lon=round(float(orb["lon"][s.idx, k]), 3), sunlit=sunlit)

    def _drain(self) -> None:
        from onboard.control import ControlClient
        from sim.link import Schedule
        for s in self.sats:
            with s.link._lock:
                for d in s.link.dirs.values():
                    d.schedule, d.p.outages = Schedule(None), []
        deadline = time.time() + self.sc.drain_wall_s
        while time.time() < deadline:
            busy = 0
            for s in self.sats:
                with ControlClient(s.eps["control"], timeout_s=5) as c:
                    st = c.status()
                busy += st["outbox"]["depth"] + st["in_flight"] + st["queue_depth"]
            if not busy:
                break
            time.sleep(0.5)

    def _finish(self, orb: Dict[str, Any], links: Dict[str, Any]) -> Dict[str, Any]:
        events = []
        for fn in ("runner_events.jsonl", "ground_events.jsonl"):
            path = os.path.join(self.dir, fn)
            if os.path.exists(path):
                with open(path) as fh:
                    events += [json.loads(line) for line in fh if line.strip()]
        events.sort(key=lambda e: e["t"])
        faults = run_check.recoveries(self.faults, events, self.sc.rollout_version)
        for f in faults:
            if f["recovered"]:
                events.append({"t": f["t_recovered"], "kind": "recovery", "sat": f["sat"], "id": f["id"], "ok": True,
                               "detail": f["recovery"]})
        events.sort(key=lambda e: e["t"])
        with open(os.path.join(self.dir, "events.jsonl"), "w") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in events)
        with open(os.path.join(self.dir, "ground.json")) as fh:
            ground = json.load(fh)
        accepted = {s.name: run_check.outbox_ids(s.daemon_dir) for s in self.sats if s.daemon_dir}
        up = {e["sat"]: e for e in events if e["kind"] == "uplink" and e.get("status") == "complete" and "bytes_sent" in e}
        summary = {"scenario": self.sc.name, "satellites": orb["names"], "stations": orb["stations"],
                   "duration_s": self.sc.duration_s, "factor": self.sc.factor, "wall_s": round(time.time() - self.t_launch, 1),
                   "eclipse": orb["eclipses"], "faults": faults,
                   "delivery": run_check.delivery(accepted, {k: v["received"] for k, v in ground.items()
                                                             if k in accepted}),
                   "uplink": {n: {"ok": n in up, "bytes_sent": up.get(n, {}).get("bytes_sent", 0),
                                  "size": up.get(n, {}).get("size", 0), "efficiency": up.get(n, {}).get("efficiency", 0.0)}
                              for n in orb["names"]},
                   "versions": {k: v["version"] for k, v in ground.items()}, "links": links,
                   "notes": ["Heartbeats reach the ground station directly (simulator-side monitoring), not over the "
                             "emulated link.", "Any station reaches any satellite: each satellite's passes over all "
                             "stations are merged into one link schedule.",
                             f"The clock started {self.clock.wall_start - self.t_launch:.0f} s after launch."]
                   + [f"{s.name} is an external daemon at {s.eps['sensor']} (not started by the runner)"
                      + ("" if s.daemon_dir else "; its outbox is not readable here, so it is left out of the "
                         "exactly-once count") for s in self.sats if s.external]}
        with open(os.path.join(self.dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
        from sim.report import write_report
        summary["report"] = write_report(self.dir)
        return summary


def _raise_on_sigterm():
    """In the main thread: make the first SIGTERM raise ``SystemExit(143)`` so the run's cleanup (stop the
    daemons and the ground station, close the links) runs; later ones are ignored while it does. Returns
    the previous handler (None off the main thread, where signals cannot be handled)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    fired = []

    def handler(signum, frame):
        if fired:
            return                                  # already cleaning up
        fired.append(signum)
        print("SIGTERM: stopping the daemons and the ground station", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def run_scenario(sc: Scenario, run_dir: str, signing_key: str = "", progress: bool = True) -> Dict[str, Any]:
    """Run ``sc`` in ``run_dir`` and return its summary (also in ``summary.json``, report in ``report.html``)."""
    saved = os.environ.get(ENV_VAR)
    previous = _raise_on_sigterm()
    try:
        return Run(sc, run_dir, signing_key, progress).execute()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved
