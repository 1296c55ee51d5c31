"""``satedge demo``: the walking skeleton from the ground to the satellite and back.

1. ground: synthetic scenes → train a cloud screen → ONNX → INT8 Q/DQ → engine bundles;
2. a daemon process loads the INT8 bundle; a ground receiver process pulls its results;
3. a sensor emulator process streams frames (and a few malformed messages) over ZeroMQ;
4. the daemon is stopped with SIGTERM (it drains), and the run is summarised.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional

from engines.errors import UserError
from onboard.control import ControlClient
from onboard.settings import DaemonSettings
from sim.badframes import KINDS
from sim.processes import DaemonProcess, ManagedProcess, free_tcp_endpoint

DEMO_MAX_PAYLOAD = 16 * 1024 * 1024     # a 256x256 6-band frame is 0.75 MiB
QUICK_FRAMES = 12
FULL_FRAMES = 60


def _stage(name: str, t0: float) -> None:
    print(f"[{time.time() - t0:6.1f} s] {name}", flush=True)


def run_demo(out_dir: str, *, quick: bool = False, seed: int = 0, frames: Optional[int] = None,
             bad: bool = True, progress: bool = True) -> Dict[str, Any]:
    """Run the whole skeleton and return its summary (the keys of ``--json``).

    Parameters
    ----------
    out_dir : str
        Work directory (bundles, logs, daemon state, summaries).
    quick : bool
        CI-sized run: fewer training tiles and frames.
    frames : int, optional
        Frames the sensor sends (default 12 quick, 60 full).
    bad : bool
        Mix one malformed message of each kind into the stream.
    """
    from ground.cloudscreen import build_cloud_screen
    from engines.outpaths import output_folder
    if frames is None:
        frames = QUICK_FRAMES if quick else FULL_FRAMES
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise UserError(f"--frames {frames!r}: give a whole number >= 1 (default {QUICK_FRAMES} with --quick, "
                        f"else {FULL_FRAMES})")
    t0 = time.time()
    output_folder(out_dir, "--out")
    output_folder(os.path.join(out_dir, "ground"), "--out")
    _stage("ground: training the cloud screen, exporting ONNX, quantizing to INT8", t0)
    ground = build_cloud_screen(os.path.join(out_dir, "ground"), quick=quick, seed=seed, progress=progress)
    _stage(f"ground: done (FP32 accuracy {ground.fp32_accuracy:.4f}, INT8 {ground.int8_accuracy:.4f})", t0)

    store_root, public_key, report = install_through_store(ground.int8_bundle, out_dir)
    _stage(f"onboard: engine store installed {report.engine} v{report.version} in slot {report.slot} "
           f"({' -> '.join(report.phases)}; canary max error {report.canary_max_abs_error or 0:.2g})", t0)
    settings = DaemonSettings(
        store_root=store_root, engine=report.engine, trusted_keys=[public_key],
        workdir=os.path.join(out_dir, "daemon"), max_payload_bytes=DEMO_MAX_PAYLOAD,
        sensor_endpoint=free_tcp_endpoint(), results_endpoint=free_tcp_endpoint(),
        control_endpoint=free_tcp_endpoint(), heartbeat_endpoint=free_tcp_endpoint(),
    ).validate()
    daemon = DaemonProcess(settings, os.path.join(out_dir, "daemon.yaml"))
    receiver = None
    try:
        daemon.wait_ready()
        _stage(f"onboard: daemon pid {daemon.pid} serving {settings.sensor_endpoint}", t0)
        summary_path = os.path.join(out_dir, "receiver.json")
        receiver = ManagedProcess("receiver", [sys.executable, "-m", "ground.receiver", "--results",
                                               settings.results_endpoint, "--out", summary_path],
                                  os.path.join(out_dir, "receiver.log"))
        sent_path = os.path.join(out_dir, "sensor.json")
        sensor = ManagedProcess("sensor", [sys.executable, "-m", "sim.sensor", "--endpoint", settings.sensor_endpoint,
                                           "--frames", str(frames), "--seed", str(10_000 + seed), "--out", sent_path,
                                           "--bad", ",".join(KINDS) if bad else "",
                                           "--oversize-bytes", str(DEMO_MAX_PAYLOAD + 1024)],
                                os.path.join(out_dir, "sensor.log"))
        _stage(f"sim: sensor emulator streaming {frames} frames" + (f" + {len(KINDS)} malformed" if bad else ""), t0)
        if sensor.wait(timeout=600) != 0:
            raise UserError(f"the sensor emulator failed:\n{sensor.log_tail()}")
        with open(sent_path) as fh:
            sent = json.load(fh)
        status = _wait_accounted(settings.control_endpoint, sent["sent_total"], daemon)
        _stage(f"onboard: {status['frames_in']} frames in, all accounted for; sending SIGTERM", t0)
        code = daemon.stop()
        if code != 0:
            raise UserError(f"the daemon exited with {code} after SIGTERM (expected 0):\n{daemon.log_tail()}")
        time.sleep(0.5)
        receiver.stop()
        with open(summary_path) as fh:
            received = json.load(fh)
    finally:
        if daemon.alive():
            daemon.stop(timeout=10)
        if receiver is not None and receiver.alive():
            receiver.stop(timeout=10)
    with open(os.path.join(settings.workdir, "stats.json")) as fh:
        stats = json.load(fh)
    summary = _summarise(ground, stats, received, sent, time.time() - t0, quick)
    _stage("done", t0)
    return summary


def install_through_store(bundle_dir, out_dir: str):
    """Sign the bundle with a fresh demo key and install it into an onboard engine store.

    Returns ``(store_root, public_key_path, InstallReport)``; raises :class:`UserError` when the
    store refuses the bundle or its canary fails.
    """
    from engines.signing import generate_keypair, sign_bundle
    from onboard.store import EngineStore
    keys = os.path.join(out_dir, "keys")
    private, public = (os.path.join(keys, "demo.key"), os.path.join(keys, "demo.pub"))
    if not os.path.exists(private):
        private, public = generate_keypair(keys, name="demo")
    sign_bundle(bundle_dir, private)
    store_root = os.path.join(out_dir, "store")
    shutil.rmtree(store_root, ignore_errors=True)     # each demo run is a fresh satellite
    report = EngineStore(store_root, trusted_keys=[public]).install(bundle_dir)
    if not report.ok and report.outcome != "already-active":
        raise UserError(f"the engine store refused the demo bundle: {report.reason}")
    return store_root, str(public), report


def _wait_accounted(endpoint: str, expected: int, daemon: DaemonProcess, timeout: float = 300.0) -> Dict[str, Any]:
    """Poll the daemon until every sent message is counted in and none is in flight."""
    client = ControlClient(endpoint)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if not daemon.alive():
                raise UserError(f"the daemon died mid-run:\n{daemon.log_tail()}")
            status = client.status()
            if status["frames_in"] >= expected and status["in_flight"] == 0:
                return status
            time.sleep(0.2)
    finally:
        client.close()
    raise UserError(f"the daemon did not account for {expected} messages within {timeout} s; last status: {status}")


def _summarise(ground, stats, received, sent, seconds, quick) -> Dict[str, Any]:
    raw = stats["bytes_raw"]
    return {
        "quick": quick,
        "frames_sent": sent["sent_total"],
        "frames_in": stats["frames_in"],
        "frames_processed": stats["frames_processed"],
        "frames_dropped": stats["frames_dropped"],
        "frames_rejected": stats["frames_rejected"],
        "rejected_by_code": stats["rejected_by_code"],
        "cloud_accuracy": ground.int8_accuracy,
        "cloud_accuracy_fp32": ground.fp32_accuracy,
        "int8_speedup": ground.int8_speedup,
        "latency_ms": {"p50": stats["latency_ms"]["p50"], "p99": stats["latency_ms"]["p99"]},
        "e2e_latency_ms": received["e2e_latency_ms"],
        "results_received": received["results"],
        "tiles_total": stats["tiles_total"],
        "tiles_discarded": stats["tiles_discarded"],
        "raw_bytes": raw,
        "downlink_bytes": received["downlink_bytes"],
        "downlink_bytes_saved_ratio": (1.0 - received["downlink_bytes"] / raw) if raw else 0.0,
        "seconds": round(seconds, 1),
    }


def format_summary(s: Dict[str, Any]) -> str:
    """The summary as an aligned two-column table."""
    rows = [
        ("frames in", s["frames_in"]),
        ("  processed", s["frames_processed"]),
        ("  dropped", s["frames_dropped"]),
        ("  rejected", f"{s['frames_rejected']}  {s['rejected_by_code']}"),
        ("  processed + dropped + rejected == in",
         s["frames_processed"] + s["frames_dropped"] + s["frames_rejected"] == s["frames_in"]),
        ("cloud-mask accuracy, held-out (INT8)", f"{s['cloud_accuracy']:.4f}"),
        ("cloud-mask accuracy, held-out (FP32)", f"{s['cloud_accuracy_fp32']:.4f}"),
        ("INT8 / FP32 speed (ONNX Runtime, CPU)", f"{s['int8_speedup']:.2f}x"),
        ("latency per frame p50 / p99 (daemon)", f"{s['latency_ms']['p50']:.1f} / {s['latency_ms']['p99']:.1f} ms"),
        ("latency sensor->ground p50 / p99", f"{s['e2e_latency_ms']['p50']:.1f} / {s['e2e_latency_ms']['p99']:.1f} ms"),
        ("tiles discarded (cloud > threshold)", f"{s['tiles_discarded']} of {s['tiles_total']}"),
        ("raw bytes / downlink bytes", f"{s['raw_bytes']:,} / {s['downlink_bytes']:,}"),
        ("downlink bytes saved", f"{100 * s['downlink_bytes_saved_ratio']:.1f} %"),
        ("wall time", f"{s['seconds']} s"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
