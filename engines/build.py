"""Build TensorRT plans for a target and add them to a bundle (``satedge engines build``).

``build_plan`` uses the TensorRT builder on a Jetson of the target's JetPack, or on a GPU host for
the ``gpu-host`` profile: explicit quantization from the bundle's Q/DQ ONNX (INT8 flag, plus FP16
where the target has it), DLA with GPU fallback (layers that cannot run on the DLA are reported
with ``IBuilderConfig.can_run_on_DLA``), an optional timing cache loaded before and saved after,
and the version-compatible flag on request. ``add_plan`` (no TensorRT needed) writes the plan under
``plans/``, adds its entry and hash to the manifest, rewrites the manifest atomically, removes the
now-stale signature and re-signs when given a key.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

from engines.bundle import Bundle
from engines.durable import write_durable
from engines.errors import UserError
from engines.hashing import sha256_bytes
from engines.manifest import MANIFEST_FILE, Manifest
from engines.ops.trt_plugins import load_plugins, tensorrt_model_bytes, uses_satedge_ops
from engines.plan import PlanEntry, normalize_sm, read_plan_header, same_release
from engines.signing import SIGNATURE_FILE, sign_bundle
from engines.targets import check_onnx_for_target, get_profile

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def plan_filename(sm: str, trt_version: str, precision: str, dla_core: Optional[int]) -> str:
    """The bundle path of a plan, e.g. ``plans/sm87_trt10.3.0_int8_dla0.plan``."""
    release = ".".join(trt_version.split(".")[:3])
    where = "gpu" if dla_core is None else "dla%d" % dla_core
    return "plans/sm%s_trt%s_%s_%s.plan" % (normalize_sm(sm).replace(".", ""), release, precision, where)


def add_plan(bundle: Bundle, plan: Union[bytes, PathLike], entry: PlanEntry, key: Optional[PathLike] = None,
             replace: bool = False) -> Bundle:
    """Add a serialized plan and its manifest entry to ``bundle`` and return the bundle re-opened.

    The old ``manifest.sig`` no longer covers the new manifest, so it is removed; with ``key``
    the bundle is signed again. An existing plan with the same key (SM, TensorRT release,
    precision, DLA core) is refused unless ``replace`` is true.
    """
    data = plan if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
    header = read_plan_header(data)
    if header.recognised and not same_release(header.trt_version, entry.trt_version):
        raise UserError("plan header says TensorRT %s but the entry says %s; refusing to add a plan whose file and "
                        "entry disagree." % (header.trt_version, entry.trt_version))
    manifest = Manifest.from_dict(bundle.manifest.to_dict())  # a copy; the opened bundle stays as it was
    old = manifest.plans or []
    plans = [p for p in old if not (replace and (p.key == entry.key or p.file == entry.file))]
    clash = [p.file for p in plans if p.key == entry.key or p.file == entry.file]
    if clash:
        raise UserError("bundle %s already has %s for %s; pass replace=True (--replace) to rebuild it."
                        % (bundle.path, clash[0], entry.describe()))
    dest = bundle.path / entry.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_durable(dest, bytes(data))
    dropped = {p.file for p in old} - {p.file for p in plans}
    files = {k: v for k, v in manifest.files.items() if k not in dropped}
    files[entry.file] = sha256_bytes(bytes(data))
    manifest.files, manifest.plans = dict(sorted(files.items())), plans + [entry]
    manifest.validate()
    sig = bundle.path / SIGNATURE_FILE
    if sig.exists():
        sig.unlink()
    write_durable(bundle.path / MANIFEST_FILE, (manifest.to_json() + "\n").encode("utf-8"))
    for stale in set(bundle.manifest.files) - set(manifest.files):
        (bundle.path / stale).unlink()
    if key is not None:
        sign_bundle(bundle.path, key)
    return Bundle.open(bundle.path)


@dataclass
class BuildReport:
    """What ``build_plan`` did: the new entry, layers that fell back from the DLA to the GPU, timing."""

    entry: PlanEntry
    bundle: Bundle
    gpu_fallback_layers: List[str] = field(default_factory=list)
    seconds: float = 0.0
    signed_by: Optional[str] = None


def _network(trt: Any, bundle: Bundle):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    model = bundle.model_path.read_bytes()
    if uses_satedge_ops(model):                      # satedge.ops nodes become cuda/plugins plugins
        load_plugins(trt)
        model = tensorrt_model_bytes(model)
    if not parser.parse(model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError("TensorRT %s could not parse %s: %s" % (trt.__version__, bundle.model_path, errors))
    return logger, builder, network, parser


def _profile(trt: Any, builder: Any, network: Any, bundle: Bundle, max_batch: int):
    inputs, _ = bundle.reference()
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        dynamic, ref = True, inputs[tensor.name].shape
        opt = tuple(r if d < 0 else d for d, r in zip(shape, ref))
        low = tuple(1 if d < 0 else d for d in shape)
        high = tuple(max(max_batch, r) if (d < 0 and k == 0) else (r if d < 0 else d)
                     for k, (d, r) in enumerate(zip(shape, ref)))
        profile.set_shape(tensor.name, low, opt, high)
    return profile if dynamic else None


def build_plan(bundle: Bundle, target: str, *, precision: Optional[str] = None, dla_core: Optional[int] = None,
               timing_cache: Optional[PathLike] = None, version_compatible: bool = False, workspace_mb: int = 1024,
               max_batch: int = 8, key: Optional[PathLike] = None, replace: bool = False) -> BuildReport:
    """Build a TensorRT plan of ``bundle`` for ``target`` on this host and add it to the bundle.

    Raises
    ------
    UserError
        When TensorRT or a GPU is missing ("TensorRT builds run on a Jetson or a GPU workstation
        with TensorRT; this host has none"), when this host's TensorRT or SM differs from the
        target profile, when the model's opset/IR is too new, or the precision/DLA request does
        not fit the target.
    """
    from engines.runners.devicebuf import open_device_memory
    from engines.runners.tensorrt import import_tensorrt

    prof, precision = get_profile(target), precision or bundle.manifest.precision
    if precision not in prof.precisions:
        raise UserError("target %s builds %s, not %s; use --precision %s." % (prof.name, ", ".join(prof.precisions),
                                                                              precision, prof.precisions[-1]))
    if dla_core is not None and not 0 <= dla_core < prof.dla_cores:
        raise UserError("target %s has %d DLA core(s); --dla-core %s does not exist there." % (prof.name, prof.dla_cores,
                                                                                               dla_core))
    if dla_core is not None and precision == "fp32":
        raise UserError("the DLA runs fp16 and int8 only; use --precision fp16 or int8 with --dla-core.")
    check_onnx_for_target(bundle.model_path, prof)
    trt = import_tensorrt("TensorRT builds")
    mem = open_device_memory()
    try:
        sm = normalize_sm(mem.compute_capability())
    finally:
        mem.close()
    if prof.trt_version and not same_release(trt.__version__, prof.trt_version):
        raise UserError("this host has TensorRT %s but target %s runs TensorRT %s; the target would refuse the plan. "
                        "Build on a lab unit flashed with JetPack %s." % (trt.__version__, prof.name, prof.trt_version,
                                                                          prof.jetpack))
    if prof.sm and sm != prof.sm:
        raise UserError("this GPU is SM %s but target %s is SM %s; build on the target's module." % (sm, prof.name, prof.sm))
    start = time.perf_counter()
    logger, builder, network, parser = _network(trt, bundle)
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT 8.2
        config.max_workspace_size = workspace_mb << 20
    if precision in ("fp16", "int8") and "fp16" in prof.precisions:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers)):
            raise UserError("an int8 plan is built from Q/DQ ONNX (explicit quantization), but %s has no "
                            "QuantizeLinear node. Export the quantized model on the ground." % bundle.model_path)
        config.set_flag(trt.BuilderFlag.INT8)
    fallback: List[str] = []
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        fallback = [network.get_layer(i).name for i in range(network.num_layers)
                    if not config.can_run_on_DLA(network.get_layer(i))]
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = _profile(trt, builder, network, bundle, max_batch)
    if profile is not None:
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT %s failed to build %s for %s (%s); see the TensorRT log above." %
                        (trt.__version__, bundle.manifest.name, prof.name, precision))
    if cache_path is not None:
        write_durable(cache_path, bytes(config.get_timing_cache().serialize()))
    entry = PlanEntry(file=plan_filename(sm, trt.__version__, precision, dla_core), sm=sm, trt_version=trt.__version__,
                      precision=precision, dla_core=dla_core, target=prof.name, version_compatible=version_compatible,
                      built_with={"host": platform.node(), "machine": platform.machine(), "tensorrt": trt.__version__,
                                  "gpu_fallback_layers": fallback,
                                  "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    seconds = time.perf_counter() - start
    if fallback:
        log.warning("%d layer(s) cannot run on DLA %d and fall back to the GPU: %s", len(fallback), dla_core,
                    ", ".join(fallback))
    new = add_plan(bundle, bytes(serialized), entry, key=key, replace=replace)
    signed = None
    if key is not None:
        from engines.signing import read_signature
        signed = read_signature(new.path)["key_id"]
    return BuildReport(entry=entry, bundle=new, gpu_fallback_layers=fallback, seconds=seconds, signed_by=signed)
