"""The ground job of the walking skeleton's cloud screen: data -> train -> ONNX -> INT8 -> bundles.

:func:`build_cloud_screen` makes training and held-out tiles from different seeds
(:func:`ground.data.scenes.make_tiles`), trains a :class:`~ground.models.cloudnet.CloudNet`,
exports it to ONNX (opset 13, IR 8: readable by TX2's TensorRT 8.2), quantizes it to symmetric
per-channel INT8 Q/DQ with training tiles as calibration data, measures held-out pixel accuracy
of both engine files through ONNX Runtime and their CPU speed side by side, and packs two
bundles, ``bundles/cloudscreen-fp32`` and ``bundles/cloudscreen-int8``, whose input
``dn_norm`` carries the normalization the onboard preprocessing applies to raw uint16 DNs.

Two sizes: ``quick`` (512 training tiles, width 8, 6 epochs; about 15 s on two cores) for tests
and CI, and the full demo (1024 tiles, width 16, 8 epochs; about a minute).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import onnx
import torch

from engines.bundle import pack_bundle
from engines.errors import UserError
from engines.manifest import TensorSpec
from engines.runners.onnxrt import OnnxRuntimeRunner
from ground.data.scenes import make_tiles
from ground.evaluate import compare_speed, pixel_accuracy
from ground.export import export_onnx
from ground.models.cloudnet import count_parameters
from ground.quantize import check_qdq, quantize_int8
from ground.train import apply_normalization, train_cloudnet

NAME, VERSION, OPSET, IR_VERSION, TILE, BANDS = "cloudscreen", 1, 13, 8, 64, 6


@dataclass(frozen=True)
class CloudScreenSettings:
    """Sizes of one cloud-screen build (see :data:`QUICK` and :data:`FULL`)."""

    n_train: int
    n_heldout: int
    epochs: int
    width: str
    batch_size: int = 32
    lr: float = 1e-2
    n_calibration: int = 128
    n_reference: int = 4
    speed_batch: int = 32


#: Tests and CI: about 15 s on two cores.
QUICK = CloudScreenSettings(n_train=512, n_heldout=256, epochs=6, width="quick")
#: The demo: about a minute on two cores.
FULL = CloudScreenSettings(n_train=1024, n_heldout=512, epochs=8, width="full")


@dataclass
class CloudScreenResult:
    """Paths and measurements of one :func:`build_cloud_screen` run.

    Attributes
    ----------
    fp32_bundle, int8_bundle : pathlib.Path
        The two bundle directories.
    fp32_model, int8_model : pathlib.Path
        The ONNX files as exported / quantized (also copied into the bundles).
    fp32_accuracy, int8_accuracy : float
        Held-out pixel accuracy of each engine file in ONNX Runtime.
    fp32_tiles_per_s, int8_tiles_per_s, int8_speedup : float
        CPU throughput (2 threads), measured side by side, and INT8 over FP32.
    train_seconds : float
        Wall time of training.
    n_train, n_heldout : int
        Tile counts.
    threshold : float
        Probability threshold of a cloud pixel.
    stage_seconds : dict
        Wall time of each stage.
    parameters : int
        Trainable parameters of the model.
    exporter : str
        Export path used (``"torchscript"``, ``"dynamo"``, ...), with opset and IR version in
        ``opset`` and ``ir_version``.
    history : list of dict
        Per-epoch training loss and accuracy.
    normalization : dict
        The input normalization (also in both manifests).
    model : CloudNet
        The trained torch model (eval mode).
    state_dict_path : pathlib.Path
        Its ``state_dict`` saved with ``torch.save`` (rebuild with ``CloudNet(width=model.width)``).
    """

    fp32_bundle: Path
    int8_bundle: Path
    fp32_model: Path
    int8_model: Path
    fp32_accuracy: float
    int8_accuracy: float
    int8_speedup: float
    fp32_tiles_per_s: float
    int8_tiles_per_s: float
    train_seconds: float
    n_train: int
    n_heldout: int
    threshold: float
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    parameters: int = 0
    exporter: str = ""
    opset: int = OPSET
    ir_version: int = IR_VERSION
    history: List[Dict] = field(default_factory=list, repr=False)
    normalization: Dict = field(default_factory=dict, repr=False)
    model: Any = field(default=None, repr=False, compare=False)
    state_dict_path: Optional[Path] = None


class _Stages:
    """Prints each stage with its wall time and keeps the times."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._start = self._t0

    def done(self, name: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t0
        print(f"[cloudscreen] {name:<9} {self.seconds[name]:6.1f} s  {note}", flush=True)
        self._t0 = now

    def total(self) -> float:
        return time.perf_counter() - self._start


def _specs(normalization: Dict):
    inputs = [TensorSpec("dn_norm", "float32", ("N", BANDS, TILE, TILE), normalization=normalization)]
    outputs = [TensorSpec("mask", "float32", ("N", 1, TILE, TILE)), TensorSpec("cloud_fraction", "float32", ("N", 1))]
    return inputs, outputs


def _reference_outputs(model_path: Path, x: np.ndarray) -> Dict[str, np.ndarray]:
    with OnnxRuntimeRunner(model_path, intra_op_threads=2) as runner:
        out = runner.infer({"dn_norm": x})
    return {k: np.asarray(out[k], dtype=np.float32) for k in ("mask", "cloud_fraction")}


def build_cloud_screen(out_dir, *, quick: bool = False, seed: int = 0, progress: bool = True) -> CloudScreenResult:
    """Train, export, quantize, evaluate and bundle the cloud screen.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder: ``models/cloudnet-{fp32,int8}.onnx``, ``models/cloudnet.pt`` (the torch
        state_dict) and ``bundles/cloudscreen-{fp32,int8}`` (replaced if present).
    quick : bool
        Use :data:`QUICK` sizes instead of :data:`FULL`.
    seed : int
        Training tiles use seed ``2 * seed``, held-out tiles ``2 * seed + 1``; training is seeded too.
    progress : bool
        Show the training progress bar (stage lines are always printed).

    Returns
    -------
    CloudScreenResult
        Bundle and model paths, accuracies, speed and timings.
    """
    from engines.outpaths import output_folder
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed {seed!r}: give a whole number >= 0")
    cfg = QUICK if quick else FULL
    out = Path(out_dir)
    output_folder(out, "--out")                     # fail now, not after the training
    for sub in ("models", "bundles"):
        output_folder(out / sub, "--out")
    st = _Stages()
    dn, mask = make_tiles(cfg.n_train, seed=2 * seed)
    dn_ho, mask_ho = make_tiles(cfg.n_heldout, seed=2 * seed + 1)
    st.done("data", f"{cfg.n_train} training + {cfg.n_heldout} held-out tiles, cloud pixels {mask.mean():.1%}")

    tr = train_cloudnet(dn, mask, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                        width=cfg.width, progress=progress)
    params = count_parameters(tr.model)
    st.done("train", f"width {cfg.width} ({params} params), {cfg.epochs} epochs, "
                     f"train accuracy {tr.history[-1]['accuracy']:.4f}")

    norm = tr.normalization
    ref_x = apply_normalization(dn_ho[:cfg.n_reference], norm)
    fp32_path, int8_path = out / "models" / "cloudnet-fp32.onnx", out / "models" / "cloudnet-int8.onnx"
    export_onnx(tr.model, fp32_path, tile=TILE, bands=BANDS, opset=OPSET, ir_version=IR_VERSION, sample=ref_x)
    exporter = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}.get("satedge.exporter", "?")
    state_dict_path = out / "models" / "cloudnet.pt"
    torch.save(tr.model.state_dict(), str(state_dict_path))
    st.done("export", f"{fp32_path.name}: opset {OPSET}, IR {IR_VERSION}, {exporter} exporter, checked against torch")

    step = max(1, cfg.n_train // cfg.n_calibration)
    quantize_int8(fp32_path, int8_path, apply_normalization(dn[::step][:cfg.n_calibration], norm))
    qdq = check_qdq(int8_path)
    st.done("quantize", f"{int8_path.name}: {len(qdq.per_channel_convs)} per-channel INT8 convs, all zero points 0")

    threshold = tr.model.threshold
    acc32 = pixel_accuracy(fp32_path, dn_ho, mask_ho, norm, threshold)
    acc8 = pixel_accuracy(int8_path, dn_ho, mask_ho, norm, threshold)
    st.done("evaluate", f"held-out pixel accuracy fp32 {acc32:.4f}, int8 {acc8:.4f}")

    speed = compare_speed(fp32_path, int8_path, apply_normalization(dn_ho[:cfg.speed_batch], norm), rounds=7,
                          calls_per_round=4)
    st.done("speed", f"fp32 {speed['fp32_tiles_per_s']:.0f} tiles/s, int8 {speed['int8_tiles_per_s']:.0f} tiles/s "
                     f"(int8/fp32 {speed['int8_speedup']:.2f}x, ONNX Runtime CPU, 2 threads)")

    inputs, outputs = _specs(norm)
    provenance = {"seed": seed, "train_tile_seed": 2 * seed, "heldout_tile_seed": 2 * seed + 1,
                  "settings": asdict(cfg), "exporter": exporter, "opset": OPSET, "ir_version": IR_VERSION,
                  "cloud_weight": tr.cloud_weight, "history": tr.history}
    bundles = {}
    for precision, path, acc, rate in (("fp32", fp32_path, acc32, speed["fp32_tiles_per_s"]),
                                       ("int8", int8_path, acc8, speed["int8_tiles_per_s"])):
        metrics = {"pixel_accuracy": acc, "fp32_pixel_accuracy": acc32, "accuracy_drop": acc32 - acc,
                   "threshold": threshold, "parameters": params, "n_train": cfg.n_train,
                   "n_heldout": cfg.n_heldout, "cpu_tiles_per_s": rate, "int8_speedup_cpu": speed["int8_speedup"],
                   "train_seconds": tr.seconds, "model_bytes": path.stat().st_size}
        bundles[precision] = pack_bundle(
            out / "bundles" / f"{NAME}-{precision}", name=NAME, version=VERSION, model_path=path,
            precision=precision, inputs=inputs, outputs=outputs, reference_inputs={"dn_norm": ref_x},
            reference_outputs=_reference_outputs(path, ref_x), metrics=metrics,
            extra_files={"cloudscreen.json": json.dumps(provenance, indent=2).encode()}, overwrite=True)
    st.done("bundle", " ".join(str(b.path) for b in bundles.values()))
    print(f"[cloudscreen] total     {st.total():6.1f} s", flush=True)
    return CloudScreenResult(
        fp32_bundle=bundles["fp32"].path, int8_bundle=bundles["int8"].path, fp32_model=fp32_path,
        int8_model=int8_path, fp32_accuracy=acc32, int8_accuracy=acc8, int8_speedup=speed["int8_speedup"],
        fp32_tiles_per_s=speed["fp32_tiles_per_s"], int8_tiles_per_s=speed["int8_tiles_per_s"],
        train_seconds=tr.seconds, n_train=cfg.n_train, n_heldout=cfg.n_heldout, threshold=threshold,
        stage_seconds=dict(st.seconds), parameters=params, exporter=exporter, history=tr.history,
        normalization=norm, model=tr.model, state_dict_path=state_dict_path)
