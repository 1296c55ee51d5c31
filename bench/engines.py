"""Cloud-screen throughput side by side: ONNX Runtime INT8 vs FP32 vs torch eager, on this CPU.

Builds the walking skeleton's cloud screen (``ground.cloudscreen.build_cloud_screen``, quick size
by default), then runs the FP32 ONNX, the INT8 Q/DQ ONNX (both through satedge's ONNX Runtime
runner) and the torch model in eager mode on the *same* normalized tiles, in interleaved rounds
(the order rotates every round), so drift of a shared machine hits all three alike. It prints the
absolute tiles/s (median over rounds, with the spread) and the ratios INT8/FP32 and torch/FP32
(median of per-round ratios), with the machine named. Read the ratios; absolute rates drift.

Torch model: ``build_cloud_screen`` does not expose the trained module or a state_dict, so unless
the result carries one (``model``/``torch_model``/``state_dict_path``), torch eager runs a fresh
``CloudNet`` of the same width in eval mode. Its throughput equals the trained model's (same
layers and shapes; the values of the weights do not change the work), but its outputs are not
the trained ones -- noted in the printout.

    python bench/engines.py [--full] [--batch 32] [--rounds 7] [--iters 20] [--threads 2] [--out DIR]
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # 'python bench/engines.py' puts bench/ first on sys.path, shadowing the engines package
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List  # noqa: E402

import numpy as np  # noqa: E402


def machine() -> str:
    """One line naming this machine: host, CPU model, cores, OS, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime
    import torch
    return "%s: %s, %d logical cores, %s; Python %s, onnxruntime %s, torch %s" % (
        platform.node(), cpu, os.cpu_count() or 0, platform.platform(terse=True), platform.python_version(),
        onnxruntime.__version__, torch.__version__)


def torch_model(result, width: str):
    """The trained torch model if the result exposes one, else a same-width CloudNet; and a note."""
    import torch
    from ground.models.cloudnet import CloudNet
    for attr in ("torch_model", "model"):
        if getattr(result, attr, None) is not None:
            return getattr(result, attr).eval(), "trained model from the result"
    path = getattr(result, "state_dict_path", None)
    model = CloudNet(width=width)
    if path:
        model.load_state_dict(torch.load(str(path), map_location="cpu"))
        return model.eval(), "trained weights from %s" % path
    return model.eval(), ("fresh CloudNet(width=%r): same architecture, untrained weights (the cloud-screen result "
                          "exposes no torch model; throughput is unaffected)" % width)


def tiles(bundle_path, batch: int) -> np.ndarray:
    """``batch`` normalized tiles (new synthetic scenes, the bundle's own normalization)."""
    from engines.bundle import Bundle
    from ground.data.scenes import make_tiles
    norm = Bundle.open(bundle_path).manifest.inputs[0].normalization
    dn, _ = make_tiles(batch, seed=12345)
    scale = np.asarray(norm["scale"], np.float32)[None, :, None, None]
    offset = np.asarray(norm["offset"], np.float32)[None, :, None, None]
    return np.ascontiguousarray(dn.astype(np.float32) * scale + offset)


def interleaved(runs: Dict[str, Callable[[], object]], rounds: int, iters: int) -> Dict[str, List[float]]:
    """Seconds per ``iters`` calls of each run, per round, in an order that rotates every round."""
    names, seconds = list(runs), {n: [] for n in runs}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(iters):
                runs[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full-size cloud screen (default: quick)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT and torch (default 2)")
    parser.add_argument("--out", help="where to build the cloud screen (default: a temporary directory)")
    args = parser.parse_args(argv)

    import torch
    from engines.runners.onnxrt import OnnxRuntimeRunner
    from ground.cloudscreen import FULL, QUICK, build_cloud_screen

    cfg = FULL if args.full else QUICK
    with tempfile.TemporaryDirectory(prefix="satedge-bench-") as tmp:
        result = build_cloud_screen(args.out or tmp, quick=not args.full, progress=False)
        x = tiles(result.fp32_bundle, args.batch)
        model, note = torch_model(result, cfg.width)
        torch.set_num_threads(args.threads)
        xt = torch.from_numpy(x)
        with OnnxRuntimeRunner(result.fp32_model, intra_op_threads=args.threads) as fp32, \
                OnnxRuntimeRunner(result.int8_model, intra_op_threads=args.threads) as int8, torch.inference_mode():
            runs = {"ORT FP32": lambda: fp32.infer({"dn_norm": x}, check_inputs=False),
                    "ORT INT8": lambda: int8.infer({"dn_norm": x}, check_inputs=False),
                    "torch eager": lambda: model(xt)}
            interleaved(runs, 1, args.warmup)
            seconds = interleaved(runs, args.rounds, args.iters)
    rate = {n: [args.batch * args.iters / s for s in v] for n, v in seconds.items()}
    from ground.models.cloudnet import resolve_width
    print("\ncloud screen (%s, width %d), batch %d, %d rounds x %d iterations, %d threads, interleaved"
          % ("full" if args.full else "quick", resolve_width(cfg.width), args.batch, args.rounds, args.iters,
             args.threads))
    print("machine: %s" % machine())
    print("torch model: %s" % note)
    print("%-12s %14s %22s" % ("backend", "tiles/s median", "min .. max"))
    for name, values in rate.items():
        print("%-12s %14.0f %10.0f .. %-10.0f" % (name, statistics.median(values), min(values), max(values)))
    for label, num in (("INT8/FP32", "ORT INT8"), ("torch/FP32", "torch eager")):
        ratios = [a / b for a, b in zip(rate[num], rate["ORT FP32"])]
        print("%-11s %.2fx  (median of per-round ratios; range %.2f .. %.2f)" % (
            label, statistics.median(ratios), min(ratios), max(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
