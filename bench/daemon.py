"""The daemon against a bare ONNX Runtime loop, side by side in one run on the same frames and model.

Default run: the quick cloud-screen model (``ground.cloudscreen.build_cloud_screen(quick=True)``,
cached under ``out/bench-daemon``) and synthetic scenes (``ground.data.scenes.make_scene``).

1. bare loop: tile, normalize and infer each frame in this process (the same runner settings);
2. the daemon as a real process: a sender thread pushes the frames over ZeroMQ as fast as the
   daemon takes them, a ground receiver thread collects and acks the results; throughput is
   frames / (first send -> last result at the ground), so it includes ingest, scheduling, the
   SQLite outbox and the downlink;
3. the daemon again with dynamic batching off (``max_batch_frames`` 1);
4. the same three on single-tile frames (where batching across frames matters);
5. steps 1-4 repeated (``--rounds``, interleaved so that drift of a shared machine hits every
   column alike); each daemon run is compared with the mean of the bare runs just before and just
   after it; medians are reported;
6. latency: the daemon once more with the sender paced at half the measured throughput
   (saturated runs measure mostly queueing).

It prints daemon / bare (goal >= 0.9), the gain from dynamic batching, and latency p50/p99.
``--load`` runs the overload test instead (``bench/daemon_load.py``).

Usage: ``python bench/daemon.py [--frames 384] [--size 256] [--threads 1] [--json]`` or
``python bench/daemon.py --load [--seconds 60] [--overload 3]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import msgpack
import numpy as np
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engines.bundle import Bundle  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402
from ground.receiver import GroundReceiver  # noqa: E402
from onboard.control import ControlClient  # noqa: E402
from onboard.settings import DaemonSettings  # noqa: E402
from onboard.tiling import TileGrid  # noqa: E402
from onboard.wire import PROTOCOL_VERSION  # noqa: E402
from sim.processes import DaemonProcess, free_tcp_endpoint  # noqa: E402

CACHE = os.path.join(ROOT, "out", "bench-daemon")


def cloud_bundle(precision: str = "int8") -> str:
    """The quick cloud-screen bundle, built once into ``out/bench-daemon`` (or taken from ``make demo``)."""
    for root in (os.path.join(CACHE, "ground"), os.path.join(ROOT, "out", "demo", "ground")):
        path = os.path.join(root, "bundles", f"cloudscreen-{precision}")
        if os.path.isfile(os.path.join(path, "manifest.json")):
            return path
    from ground.cloudscreen import build_cloud_screen
    res = build_cloud_screen(os.path.join(CACHE, "ground"), quick=True, progress=False)
    return str(res.int8_bundle if precision == "int8" else res.fp32_bundle)


def make_frames(n: int, size: int, seed: int = 500) -> List[np.ndarray]:
    """``n`` synthetic 6-band uint16 scenes of ``size`` x ``size`` (about half of them cloudy)."""
    from ground.data.scenes import make_scene
    return [make_scene(seed + i, size, size).dn for i in range(n)]


def frame_parts(data: np.ndarray, stream: str, frame_id: int, deadline_s: Optional[float] = None) -> List[Any]:
    """A frame message stamped now (``ts``, and ``deadline`` = now + ``deadline_s`` when given)."""
    now = time.time()
    h = {"v": PROTOCOL_VERSION, "type": "frame", "id": os.urandom(16).hex(), "ts": now, "stream": stream,
         "frame_id": frame_id, "dtype": str(data.dtype), "shape": list(data.shape)}
    if deadline_s is not None:
        h["deadline"] = now + deadline_s
    return [b"frame", msgpack.packb(h), data]


def bare_loop(bundle_dir: str, frames: List[np.ndarray], threads: int, max_batch: int = 16,
              frames_per_call: int = 1) -> float:
    """Frames per second of tile + normalize + infer in one loop (after one warm-up frame).

    ``frames_per_call`` > 1 puts the tiles of that many consecutive frames into each call (the
    ceiling of batching across frames).
    """
    bundle = Bundle.open(bundle_dir)
    spec = bundle.manifest.inputs[0]
    scale = np.asarray(spec.normalization["scale"], np.float32).reshape(-1, 1, 1)
    offset = np.asarray(spec.normalization["offset"], np.float32).reshape(-1, 1, 1)
    tile = int(spec.shape[-1])
    with OnnxRuntimeRunner(bundle.model_path, intra_op_threads=threads) as runner:
        def run(group: List[np.ndarray]) -> None:
            tiles = np.concatenate([TileGrid(f.shape[1], f.shape[2], tile).cut(f) for f in group])
            for i in range(0, len(tiles), max(max_batch, len(group))):
                x = tiles[i:i + max(max_batch, len(group))].astype(np.float32) * scale + offset
                runner.infer({spec.name: x}, check_inputs=False)
        run(frames[:1])
        start = time.perf_counter()
        for i in range(0, len(frames), frames_per_call):
            run(frames[i:i + frames_per_call])
        return len(frames) / (time.perf_counter() - start)


class Ground(threading.Thread):
    """A ground receiver polled in its own thread; ``arrived[result_id]`` is the receipt time."""

    def __init__(self, settings: DaemonSettings):
        super().__init__(daemon=True)
        self.rx = GroundReceiver(settings.results_endpoint, ctx=zmq.Context(), ack_endpoint=settings.ack_endpoint)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.rx.poll(50)
        self.rx.close()

    def count(self) -> int:
        return len(self.rx.results)


def start_daemon(bundle_dir: str, workdir: str, threads: int, **kw: Any) -> DaemonProcess:
    """A daemon process serving ``bundle_dir`` on fresh ports, acks on (new ports if one was taken meanwhile)."""
    os.makedirs(workdir, exist_ok=True)
    for attempt in range(3):
        data = dict(bundle=bundle_dir, workdir=workdir, sensor_endpoint=free_tcp_endpoint(),
                    results_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                    heartbeat_endpoint=free_tcp_endpoint(), ack_endpoint=free_tcp_endpoint(),
                    intra_op_threads=threads, heartbeat_interval_s=0.5)
        data.update(kw)
        proc = DaemonProcess(DaemonSettings.from_mapping(data), os.path.join(workdir, "daemon.yaml"))
        try:
            proc.wait_ready(120)
            return proc
        except UserError:
            if proc.proc.returncode != 11 or attempt == 2:     # exitcodes.BIND_FAILED: a port was taken
                raise
    raise AssertionError("unreachable")


def daemon_run(bundle_dir: str, frames: List[np.ndarray], threads: int, workdir: str,
               max_batch_frames: int, rate: float = 0.0) -> Dict[str, Any]:
    """Throughput and latency of the daemon process on ``frames`` (after a warm-up of 4 frames).

    ``rate`` > 0 paces the sender (frames per second) instead of sending as fast as the daemon takes them.
    """
    proc = start_daemon(bundle_dir, workdir, threads, scheduler={"max_batch_frames": max_batch_frames})
    s = proc.settings
    ground = Ground(s)
    ground.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 8)
    push.connect(s.sensor_endpoint)
    try:
        for i, f in enumerate(frames[:4]):
            push.send_multipart(frame_parts(f, "warmup", i), copy=False)
        _wait(lambda: ground.count() >= 4, 60, "warm-up results")
        start = time.time()
        for i, f in enumerate(frames):
            if rate > 0:
                time.sleep(max(0.0, start + i / rate - time.time()))
            push.send_multipart(frame_parts(f, "msi", i), copy=False)
        _wait(lambda: ground.count() >= 4 + len(frames), 600, "all results at the ground")
        done = max(h["_received"] for h in ground.rx.results.values())
        lat = np.array([(h["_received"] - h["sensor_ts"]) * 1000 for h in ground.rx.results.values()
                        if h["stream"] == "msi"])
        with ControlClient(s.control_endpoint) as client:
            st = client.status()
    finally:
        push.close(0)
        ctx.term()
        code = proc.stop(timeout=60)
        ground.halt.set()
        ground.join(5)
    return {"fps": len(frames) / (done - start), "e2e_p50_ms": float(np.percentile(lat, 50)),
            "e2e_p99_ms": float(np.percentile(lat, 99)), "daemon_p50_ms": st["latency_ms"]["p50"],
            "daemon_p99_ms": st["latency_ms"]["p99"], "frames_per_batch": st["worker"]["frames_per_batch"],
            "duplicates": ground.rx.duplicates, "exit_code": code}


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise RuntimeError(f"bench: {what} did not arrive within {timeout} s")
        time.sleep(0.01)


def run_bench(n_frames: int = 384, size: int = 256, threads: int = 1, small: int = 64, rounds: int = 3,
              precision: str = "int8") -> Dict[str, Any]:
    """Everything of the default run (see module doc), as a dict; ratios are medians over ``rounds``."""
    bundle = cloud_bundle(precision)
    sets = {"scene": make_frames(n_frames, size), "small": make_frames(4 * n_frames, small, seed=900)}
    runs: Dict[str, List[Dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        for r in range(rounds):                       # interleaved, so that drift hits every column alike
            for name, frames in sets.items():         # bare runs before and after each daemon run
                row: Dict[str, Any] = {"bare_runs": [bare_loop(bundle, frames, threads)]}
                for key, max_frames in (("batched", 8), ("single", 1)):
                    row[key] = daemon_run(bundle, frames, threads, os.path.join(tmp, f"{name}{r}{key}"), max_frames)
                    row["bare_runs"].append(bare_loop(bundle, frames, threads))
                    row[key]["bare"] = float(np.mean(row["bare_runs"][-2:]))
                row["bare"] = float(np.mean(row["bare_runs"]))
                runs.setdefault(name, []).append(row)
        fps = float(np.median([x["batched"]["fps"] for x in runs["scene"]]))
        paced = daemon_run(bundle, sets["scene"], threads, os.path.join(tmp, "paced"), 8, rate=fps / 2)
    context = {"scene_bare_2_threads": bare_loop(bundle, sets["scene"], 2),
               "small_bare_8_frames_per_call": bare_loop(bundle, sets["small"], threads, frames_per_call=8)}
    out: Dict[str, Any] = {"bundle": bundle, "frames": n_frames, "size": size, "threads": threads, "small_size": small,
                           "rounds": rounds, "runs": runs, "paced": paced, "paced_rate": fps / 2, "context": context}
    for name, rows in runs.items():
        out[name] = {"bare_fps": float(np.median([x["bare"] for x in rows])),
                     "daemon_fps": float(np.median([x["batched"]["fps"] for x in rows])),
                     "unbatched_fps": float(np.median([x["single"]["fps"] for x in rows])),
                     "ratio": float(np.median([x["batched"]["fps"] / x["batched"]["bare"] for x in rows])),
                     "unbatched_ratio": float(np.median([x["single"]["fps"] / x["single"]["bare"] for x in rows])),
                     "batching_gain": float(np.median([x["batched"]["fps"] / x["single"]["fps"] for x in rows])),
                     "frames_per_batch": float(np.median([x["batched"]["frames_per_batch"] for x in rows])),
                     "saturated_e2e_ms": [float(np.median([x["batched"][k] for x in rows]))
                                          for k in ("e2e_p50_ms", "e2e_p99_ms")]}
    return out


def report(r: Dict[str, Any]) -> str:
    """The figures as text."""
    sc, sm, p = r["scene"], r["small"], r["paced"]
    rows = [f"model {r['bundle']}; ONNX Runtime CPU, {r['threads']} intra-op thread(s); medians of {r['rounds']} "
            "interleaved rounds; each daemon run against the bare runs just before and after it",
            f"{r['frames']} frames {r['size']}x{r['size']} (16 tiles each):",
            f"  bare ONNX Runtime loop       {sc['bare_fps']:7.1f} frames/s   (with 2 intra-op threads: "
            f"{r['context']['scene_bare_2_threads']:.1f})",
            f"  daemon end to end, batched   {sc['daemon_fps']:7.1f} frames/s   daemon / bare = {sc['ratio']:.3f}"
            "  (goal >= 0.9)",
            f"  daemon, batching off         {sc['unbatched_fps']:7.1f} frames/s   daemon / bare = {sc['unbatched_ratio']:.3f},"
            f" batching gain {sc['batching_gain']:.2f}x ({sc['frames_per_batch']:.1f} frames per batch)",
            f"  latency sensor->ground at {r['paced_rate']:.0f} frames/s (half the throughput): p50 "
            f"{p['e2e_p50_ms']:.1f} ms, p99 {p['e2e_p99_ms']:.1f} ms; saturated (sent as fast as taken): "
            f"{sc['saturated_e2e_ms'][0]:.0f} / {sc['saturated_e2e_ms'][1]:.0f} ms, mostly queueing",
            f"{4 * r['frames']} frames {r['small_size']}x{r['small_size']} (1 tile each):",
            f"  bare ONNX Runtime loop       {sm['bare_fps']:7.1f} frames/s   one call per frame (8 frames per call: "
            f"{r['context']['small_bare_8_frames_per_call']:.1f})",
            f"  daemon, batched              {sm['daemon_fps']:7.1f} frames/s   daemon / bare = {sm['ratio']:.3f}",
            f"  daemon, batching off         {sm['unbatched_fps']:7.1f} frames/s   batching gain {sm['batching_gain']:.2f}x"
            f" ({sm['frames_per_batch']:.1f} frames per batch)"]
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=384)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (daemon and bare loop)")
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--load", action="store_true", help="run the overload test (bench/daemon_load.py) instead")
    p.add_argument("--seconds", type=float, default=60.0, help="--load: overload phase length")
    p.add_argument("--overload", type=float, default=3.0, help="--load: offered rate / measured capacity")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.load:
        from bench.daemon_load import main_load
        return main_load(a)
    r = run_bench(a.frames, a.size, a.threads, rounds=a.rounds, precision=a.precision)
    print(json.dumps(r, indent=2) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
