"""``satedge flash BUNDLE``: check a Jetson, build or reuse its plan, install through the daemon, report.

``plan_flash`` checks a bundle against a ``DeviceProfile`` (probed, or a profile file) and lists the
steps; ``flash`` carries them out on a ``Device``: stage the bundle, build the plan there (``satedge
engines build``, or ``trtexec`` where satedge cannot reach TensorRT, as on a TX2), add it and re-sign
here, install through the daemon's control channel, measure the canary's accuracy there. That real
path has never run against a Jetson (``docs/hil.md``)."""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from engines.build import add_plan, plan_filename
from engines.bundle import Bundle
from engines.device_profile import (DAEMON_MIN_PYTHON, Device, DeviceProfile, daemon_python_ok, load_profile,
                                    load_profile_file, match_target, shipped_profiles)
from engines.errors import PlanIncompatible, UserError
from engines.plan import PlanEntry, parse_version, select_plan
from engines.signing import SIGNATURE_FILE
from engines.targets import TargetProfile, check_onnx_for_target, read_onnx_versions

CANARY_TOLERANCE = "fp32=1e-3"  # the store's fp32 canary tolerance (onboard/store_checks.py), not compare's 1e-4


@dataclass
class FlashOptions:
    """How to flash: signing key (here); staging folder, control endpoint and Curve key files (on the device)."""

    key: Optional[str] = None
    remote_dir: str = "/var/tmp/satedge-flash"
    control: str = "tcp://127.0.0.1:5557"
    control_keys: Tuple[str, str] = ("", "")  # the daemon's .curve.pub and the operator's .curve.key
    timeout: float = 900.0  # seconds for the install reply (canary and health checks run before it)


class Check(NamedTuple):
    """One line of the compatibility report: ``status`` is pass, fail, warn or info."""
    name: str
    status: str
    detail: str


@dataclass
class FlashPlan:
    """What ``flash`` would do for one bundle on one device, and the checks; ``ok`` when none failed."""

    bundle: Bundle
    device: DeviceProfile
    opts: FlashOptions
    precision: str
    dla_core: Optional[int]
    target: Optional[TargetProfile] = None
    checks: List[Check] = field(default_factory=list)
    action: str = "none"  # reuse | build-satedge | build-trtexec | none
    plan: Optional[PlanEntry] = None
    backends: str = "onnxrt"
    steps: List[str] = field(default_factory=list)
    remote: str = ""  # where the bundle is staged on the device

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not any(c.status == "fail" for c in self.checks)

    def format(self) -> str:
        """The report a person reads: device, checks, numbered steps."""
        d, m = self.device, self.bundle.manifest
        facts = tuple(v or "?" for v in (d.model, d.l4t, d.jetpack, d.tensorrt, d.cuda, d.sm)) + (d.dla_cores,)
        lines = ["flash %s v%d (%s) -> %s [%s]" % (m.name, m.version, self.precision, d.name, d.source),
                 "device: %s; L4T %s, JetPack %s, TensorRT %s, CUDA %s, SM %s, %d DLA core(s)" % facts, "checks:"]
        lines += ["  %-4s  %-9s  %s" % (c.status, c.name, c.detail) for c in self.checks]
        return "\n".join(lines + ["steps:"] + ["  %d. %s" % (i + 1, s) for i, s in enumerate(self.steps)])


def trtexec_args(plan: FlashPlan, max_batch: int = 8) -> List[str]:
    """The ``trtexec`` command line that builds ``plan.plan`` from the bundle staged on the device."""
    entry, trt, rb = plan.plan, parse_version(plan.device.tensorrt or "0.0"), plan.remote
    args = [plan.device.trtexec or "trtexec", "--onnx=%s/model.onnx" % rb, "--saveEngine=%s/%s" % (rb, entry.file),
            "--workspace=1024" if trt[:2] < (8, 4) else "--memPoolSize=workspace:1024"]
    args += {"fp16": ["--fp16"], "int8": ["--fp16", "--int8"]}.get(entry.precision, [])
    if entry.dla_core is not None:
        args += ["--useDLACore=%d" % entry.dla_core, "--allowGPUFallback"]
    inputs, _ = plan.bundle.reference()
    shapes: List[List[str]] = [[], [], []]
    for spec in (s for s in plan.bundle.manifest.inputs if not all(isinstance(d, int) for d in s.shape)):
        ref = inputs[spec.name].shape
        dims = [(d, d, d) if isinstance(d, int) else (1 if k == 0 else r, r, max(max_batch, r) if k == 0 else r)
                for k, (d, r) in enumerate(zip(spec.shape, ref))]
        for i in range(3):
            shapes[i].append("%s:%s" % (spec.name, "x".join(str(t[i]) for t in dims)))
    if shapes[0]:
        args += ["--%sShapes=%s" % (w, ",".join(s)) for w, s in zip(("min", "opt", "max"), shapes)]
    return args


def _python_check(d: DeviceProfile) -> Check:
    where = "%s is Python %s" % (d.python_path, d.python or "?")
    if not daemon_python_ok(d.python):
        return Check("python", "fail", "the onboard daemon needs Python >= %d.%d; %s (system python3 %s), so it "
                     "does not run there. Plan (docs/hil.md): a Python 3.8 venv (deadsnakes or conda) with satedge"
                     "[onboard] and pycuda serving the ONNX model (onnxrt; TensorRT's bindings there are for the "
                     "system Python only), plans built with trtexec; then --python VENV/bin/python."
                     % (DAEMON_MIN_PYTHON + (where, d.system_python or "?")))
    if not d.has("satedge"):
        return Check("python", "fail", "%s without satedge: 'pip install -e .[onboard]' there (docs/hil.md)" % where)
    return Check("python", "pass", "the daemon runs: %s (needs >= %d.%d) with satedge %s; system python3 %s"
                 % ((where,) + DAEMON_MIN_PYTHON + (d.modules.get("satedge"), d.system_python or "?")))


def _plan_check(out: FlashPlan, python_ok: bool) -> Check:
    d, m = out.device, out.bundle.manifest
    try:
        out.plan, out.action = select_plan(m.plans or [], d.tensorrt, d.sm, out.precision, out.dla_core), "reuse"
        return Check("plan", "pass", "reuse %s (%s): it matches this unit" % (out.plan.file, out.plan.describe()))
    except PlanIncompatible:
        key = dict(sm=d.sm, trt_version=d.tensorrt, precision=out.precision, dla_core=out.dla_core)
        out.plan = PlanEntry(file=plan_filename(**key), target=out.target.name, **key)
    if python_ok and d.has("tensorrt"):
        out.action, how = "build-satedge", "'satedge engines build' on the device"
    elif d.trtexec:
        out.action, how = "build-trtexec", "trtexec on the device (satedge %s)" % (
            "there has no TensorRT bindings" if python_ok else "cannot run there")
    else:
        return Check("plan", "fail", "no plan has key %s, and the device has neither satedge with TensorRT nor "
                     "trtexec to build it" % out.plan.describe())
    return Check("plan", "pass", "no plan in the bundle has key %s; build it with %s" % (out.plan.describe(), how))


def plan_flash(bundle: Bundle, device: DeviceProfile, *, precision: Optional[str] = None,
               dla_core: Optional[int] = None, opts: Optional[FlashOptions] = None) -> FlashPlan:
    """Check ``bundle`` against ``device`` (probed, or a profile file) and list the steps; nothing is touched.

    Parameters
    ----------
    precision, dla_core : str, int, optional
        The plan to run: the manifest's precision and the GPU by default.
    opts : FlashOptions, optional
        Signing key (required when a plan is added), staging folder, control endpoint and keys.
    """
    d, opts = device, opts or FlashOptions()
    out = FlashPlan(bundle, d, opts, precision or bundle.manifest.precision, dla_core, remote="%s/%s-v%d" % (
        opts.remote_dir.rstrip("/"), bundle.manifest.name, bundle.manifest.version))
    add, prec = out.checks.append, out.precision
    try:
        out.target = t = match_target(d)
    except UserError as exc:
        add(Check("target", "fail", str(exc)))
        return out
    add(Check("target", "pass", "%s: SM %s, TensorRT %s, CUDA %s, Python %s"
              % (t.name, t.sm, t.trt_version, t.cuda_version, t.python_version)))
    ir, opsets = read_onnx_versions(bundle.model_path)
    try:
        check_onnx_for_target(bundle.model_path, t)
        add(Check("onnx", "pass", "model.onnx: opset %d, IR %d; %s (TensorRT %s) reads opset %d-%d, IR <= %d"
                  % (opsets[""], ir, t.name, t.trt_version, t.min_opset, t.max_opset, t.max_ir_version)))
    except UserError as exc:
        add(Check("onnx", "fail", str(exc)))
    good = prec in t.precisions
    add(Check("precision", "pass" if good else "fail", "%s (%s builds %s)%s" % (prec, t.name, ", ".join(
        t.precisions), "" if good else "; flash the fp32 bundle (--precision fp16 for half precision)")))
    good = dla_core is None or (0 <= dla_core < d.dla_cores and prec != "fp32")
    on = "the GPU" if dla_core is None else "DLA core %d%s" % (dla_core, ", GPU fallback on" if good else
                                                             ": not there, or fp32 (the DLA runs fp16/int8 only)")
    add(Check("dla", "info" if dla_core is None else "pass" if good else "fail", "%d DLA core(s); the plan runs on "
              "%s" % (d.dla_cores, on)))
    python = _python_check(d)
    add(_plan_check(out, python.status == "pass"))
    lib = t.buffer_library
    add(Check("buffers", "pass" if d.has(lib) else "warn", "%s%s: %s" % (
        lib, " (cuda-python has no JetPack 4 / Python 3.6 build)" if lib == "pycuda" else "", "installed (%s)"
        % d.modules[lib] if d.has(lib) else "not installed for %s: 'pip install %s' there" % (d.python_path, lib))))
    add(python)
    trt = python.status == "pass" and d.has("tensorrt") and d.has(lib)
    out.backends = "tensorrt,onnxrt" if trt else "onnxrt"
    add(Check("backend", "pass" if trt else "warn", "tensorrt: the daemon can run the plan (TensorRT %s, %s)" % (
        d.modules.get("tensorrt"), lib) if trt else "onnxrt (CPU): the daemon's Python cannot run TensorRT plans "
        "(TensorRT bindings %s, %s %s); set backend: onnxrt" % (d.modules.get("tensorrt") or "missing", lib,
                                                              d.modules.get(lib) or "missing")))
    build = out.action.startswith("build")
    signed = build and bool(opts.key) and Path(opts.key).is_file() or not build and (bundle.path /
                                                                        SIGNATURE_FILE).is_file()
    add(Check("signature", "pass" if signed else "fail", ("adding the plan removes the signature: %s" % (
        ("re-signed here with %s" % opts.key if Path(opts.key).is_file() else "--key %s is not a file: pass the "
         "private .key of 'satedge keys gen'" % opts.key) if opts.key else
        "pass --key (the store installs signed bundles only)"))
        if build else "bundle is %s" % ("signed" if signed else "unsigned; sign it ('satedge engines sign')")))
    py, rb = "%s -m satedge_cli" % d.python_path, out.remote
    out.steps = ["copy the bundle to %s on the device" % rb]
    if out.action == "build-satedge":
        out.steps.append("build %s: %s engines build %s --target %s --precision %s%s" % (
            out.plan.file, py, rb, t.name, prec, "" if dla_core is None else " --dla-core %d" % dla_core))
    elif out.action == "build-trtexec":
        out.steps += ["build %s: %s" % (out.plan.file, " ".join(shlex.quote(a) for a in trtexec_args(out))),
                      "check that it loads: %s --loadEngine=%s/%s" % (d.trtexec, rb, out.plan.file)]
    if build:
        out.steps += ["fetch %s, add it to %s, re-sign it here and copy it to %s" % (out.plan.file, bundle.path, rb)]
    curve = "Curve keys" if opts.control_keys[0] else "no Curve keys: test daemons only"
    out.steps += ["install: %s sends 'install' to the daemon's control channel %s (%s); the reply comes after "
                  "verify, stage, canary, activate, health, commit (a failed canary keeps the old engine, "
                  "failed health checks roll back to it)" % (d.python_path, opts.control, curve),
                  "canary accuracy against the bundle's reference outputs: %s engines compare %s --backends %s "
                  "--tolerance %s" % (py, rb, out.backends, CANARY_TOLERANCE)]
    return out


def stage_and_build(plan: FlashPlan, device: Device, say: Callable[[str], None] = print) -> Bundle:
    """Stage the bundle on ``device``; when ``plan.action`` builds, build the plan there, add it to the bundle
    and re-sign it here (the key never leaves this host), and stage that. Return the bundle as it now is."""
    opts, bundle, rb, q, entry = plan.opts, plan.bundle, plan.remote, shlex.quote, plan.plan
    say("copying %s to %s:%s" % (bundle.path, device.label, rb))
    device.copy_dir(bundle.path, rb)
    if plan.action == "build-satedge":
        say("building %s on %s (satedge engines build)" % (entry.file, device.label))
        device.run("%s -m satedge_cli engines build %s --target %s --precision %s --replace%s" % (
            q(plan.device.python_path), q(rb), plan.target.name, entry.precision, "" if entry.dla_core is None
            else " --dla-core %d" % entry.dla_core), timeout=3600)
        built = [e for e in map(PlanEntry.from_dict, json.loads(device.read_file(rb + "/manifest.json")).get(
            "plans") or []) if e.key == entry.key]
        if not built:
            raise UserError("the build on %s left no plan %s in %s." % (device.label, entry.describe(), rb))
        entry = built[0]
    elif plan.action == "build-trtexec":
        say("building %s on %s (trtexec)" % (entry.file, device.label))
        args = trtexec_args(plan)
        device.run("mkdir -p %s/plans && %s" % (q(rb), " ".join(q(a) for a in args)), timeout=3600)
        device.run("%s --loadEngine=%s/%s" % (q(args[0]), q(rb), entry.file), timeout=600)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = PlanEntry(**dict(entry.to_dict(), built_with={"tool": "trtexec", "host": device.label,
                                                              "command": " ".join(args[1:]), "built": stamp}))
    if plan.action.startswith("build"):
        bundle = add_plan(bundle, device.read_file("%s/%s" % (rb, entry.file)), entry, key=opts.key, replace=True)
        say("added %s (%s) to %s and re-signed it" % (entry.file, entry.describe(), bundle.path))
        device.copy_dir(bundle.path, rb)
    return bundle


def flash(plan: FlashPlan, device: Device, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Carry out ``plan.steps`` on ``device``; return ``report`` (the install reply's ok, outcome, version,
    reason, ...), ``engine`` (what the daemon serves afterwards) and ``compare`` (the accuracy table)."""
    if not plan.ok:
        raise UserError("not flashing: %s." % "; ".join(c.detail for c in plan.checks if c.status == "fail"))
    opts, rb = plan.opts, plan.remote
    stage_and_build(plan, device, say)
    say("installing %s through %s on %s" % (rb, opts.control, device.label))
    result = device.install(plan.device.python_path, rb, opts.control, opts.control_keys, opts.timeout)
    say("install: %s" % ", ".join("%s %s" % kv for kv in sorted(result["report"].items())))
    cmp = device.run("%s -m satedge_cli engines compare %s --backends %s --tolerance %s" % (shlex.quote(
        plan.device.python_path), shlex.quote(rb), plan.backends, CANARY_TOLERANCE), check=False, timeout=900)
    result["compare"] = cmp.stdout.decode("utf-8", "replace").strip()
    say("canary accuracy on %s against the bundle's reference outputs:\n%s" % (device.label, result["compare"]))
    return result


def add_flash_parser(subparsers) -> None:
    """Add the ``flash`` verb to ``subparsers`` (the lead wires it into the ``satedge`` command)."""
    p = subparsers.add_parser("flash", help="check a Jetson, build or reuse its plan, install a bundle through its "
                              "daemon (--dry-run --profile NAME: the plan of actions for an absent unit)")
    p.add_argument("bundle", help="bundle directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", metavar="HOST", help="[user@]host of the Jetson, reached with ssh")
    where.add_argument("--local", action="store_true", help="flash this host (run on the Jetson itself)")
    where.add_argument("--profile", help="shipped device profile, dry run only: %s" % ", ".join(shipped_profiles()))
    where.add_argument("--profile-file", metavar="PATH", help="device profile JSON, dry run only")
    p.add_argument("--dry-run", action="store_true", help="print the checks and steps; touch nothing")
    p.add_argument("--python", help="Python on the device that runs satedge and the daemon (default python3)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="default: the manifest's")
    p.add_argument("--dla-core", type=int, help="plan for this DLA core (GPU fallback on)")
    p.add_argument("--key", help="private key that re-signs the bundle after a plan is added")
    p.add_argument("--ssh-option", action="append", default=[], help="extra ssh argument (repeatable)")
    p.add_argument("--remote-dir", default=FlashOptions.remote_dir, help="staging folder on the device")
    p.add_argument("--control", default=FlashOptions.control, help="control endpoint, as the device sees it")
    p.add_argument("--control-keys", nargs=2, metavar=("DAEMON_PUB", "OPERATOR_KEY"), default=("", ""),
                   help="Curve keys, paths on the device: the daemon's .curve.pub and this operator's .curve.key")
    p.add_argument("--timeout", type=float, default=FlashOptions.timeout, help="seconds to wait for the install reply")
    p.set_defaults(func=run_flash)


def run_flash(args) -> int:
    """The ``flash`` verb: 0 when flashed (dry run: when no check fails), 1 otherwise."""
    if not Path(args.bundle).is_dir():
        raise UserError("flash works on a bundle directory (a new plan is added to it); unpack the archive first.")
    if args.dla_core is not None and args.dla_core < 0:
        raise UserError("--dla-core %d: DLA cores are numbered from 0 (see the target's DLA count in 'satedge "
                        "engines targets')." % args.dla_core)
    if not args.timeout > 0:
        raise UserError("--timeout %s: give the seconds to wait for the install reply, > 0." % args.timeout)
    if (args.profile or args.profile_file) and not args.dry_run:
        raise UserError("a device profile stands in for an absent unit and only plans: add --dry-run, or name the "
                        "unit with --device HOST (--local on the unit itself).")
    device = None if args.profile or args.profile_file else Device(args.device, tuple(args.ssh_option))
    if device is None:
        profile = load_profile(args.profile) if args.profile else load_profile_file(args.profile_file)
    else:
        profile = device.probe(args.python)
        if args.local and not profile.l4t:
            raise UserError("--local flashes the Jetson this runs on, and this host is not one (no /etc/nv_tegra_"
                            "release); name the unit with --device HOST, or plan with --profile NAME --dry-run.")
    opts = FlashOptions(args.key, args.remote_dir, args.control, tuple(args.control_keys), args.timeout)
    plan = plan_flash(Bundle.open(args.bundle), profile, precision=args.precision, dla_core=args.dla_core, opts=opts)
    print(plan.format())
    if args.dry_run:
        print("dry run: nothing was copied, built or installed.")
        return 0 if plan.ok else 1
    return 0 if flash(plan, device)["report"]["ok"] else 1
