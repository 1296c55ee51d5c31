"""Config values are checked at load: a bad one is a typed error naming its key, exit status 2.

Real YAML/TOML files through the real ``load_settings``, the real daemon process for the
defects that used to crash it later (traceback / exit 1, or a stage dying and exit 20), and the
settings tables of docs/onboard.md against the code's defaults.
"""
import dataclasses
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from engines.errors import UserError
from onboard import settings as S
from onboard.power import PowerPolicy, PowerSettings
from onboard.settings import DaemonSettings, SettingsError, load_settings, write_settings
from onboard.telemetry import ScriptedSource
from onboard.transfer import TransferConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READING = "{power_w: 5, temp_c: 40, soc: 0.9, sunlit: true, t: 0}"

# (YAML lines under `daemon:`, the key path the error must name, a phrase of the message)
BAD = [
    ("power: {temp_soft_c: hot}", "settings.power.temp_soft_c", "must be a number; got 'hot'"),
    ("telemetry: {source: scripted, readings: [{power_w: x}]}", "settings.telemetry.readings[0]",
     "missing key(s) ['temp_c', 'soc', 'sunlit', 't']"),
    ("telemetry: {source: scripted, readings: [{power_w: x, temp_c: 1, soc: 0.5, sunlit: true, t: 0}]}",
     "settings.telemetry.readings[0].power_w", "must be a number; got 'x'"),
    ("telemetry: {source: scripted, readings: [" + READING + ", {power_w: 1, temp_c: 1, soc: 0.5, sunlit: x!, t: 1}]}",
     "settings.telemetry.readings[1].sunlit", "must be true or false"),
    ("telemetry: {source: scripted, readings: [{power_w: 1, temp_c: 1, soc: 0.5, sunlit: true, t: 0, volts: 3}]}",
     "settings.telemetry.readings[0]", "unknown key(s) ['volts']"),
    ("telemetry: {source: scripted}", "settings.telemetry.readings", "non-empty list"),
    ("outbox: {windows: [[5]]}", "settings.outbox.windows[0]", "[start, end] pair"),
    ("outbox: {windows: [[0, 10], [20, 5]]}", "settings.outbox.windows[1]", "[start, end] pair"),
    ("outbox: {windows: [5, 6]}", "settings.outbox.windows[0]", "must be a list"),
    ("outbox: {lease_s: -1}", "settings.outbox.lease_s", "must be a number > 0"),
    ("scheduler: {capacities: [0, 0]}", "settings.scheduler.capacities[0]", "must be a whole number > 0"),
    ("scheduler: {capacities: []}", "settings.scheduler.capacities", "non-empty"),
    ("scheduler: {admission: sometimes}", "settings.scheduler.admission", "one of ['block', 'reject']"),
    ("scheduler: {max_wait_s: .inf}", "settings.scheduler.max_wait_s", "must be a finite number; got inf"),
    ("scheduler: {max_wait_s: 1e10}", "settings.scheduler.max_wait_s", "within [0, 10]"),
    ("backend: bogus", "settings.backend", "one of ['onnxrt', 'tensorrt']"),
    ("workdir: /etc/passwd", "settings.workdir", "a folder"),
    ("uplink: {endpoint: garbage}", "settings.uplink.endpoint", "a ZeroMQ endpoint; got 'garbage'"),
    ("control_endpoint: 127.0.0.1:5557", "settings.control_endpoint", "tcp://HOST:PORT"),
    ("drain_timeout_s: .inf", "settings.drain_timeout_s", "finite"),
    ("uplink: {transfer: {nosuch: 3}}", "settings.uplink.transfer", "unknown key(s) ['nosuch']"),
    ("uplink: {transfer: {chunk_size: 0}}", "settings.uplink.transfer.chunk_size", "> 0"),
    ("uplink: {transfer: {nak_timer_s: soon}}", "settings.uplink.transfer.nak_timer_s", "must be a number"),
    ("uplink: {scrub_interval_s: -5}", "settings.uplink.scrub_interval_s", ">= 0"),
    ("power: {variants: fp32}", "settings.power.variants", "must be a list; got 'fp32'"),
    ("power: {variants: []}", "settings.power.variants", "non-empty"),
    ("power: {variants: [fp32, fp16]}", "settings.power.variants[1]", "power_scale entry"),
    ("power: {power_scale: {fp32: x}}", "settings.power.power_scale.fp32", "must be a number"),
    ("power: {temp_soft_c: 95}", "settings.power.temp_soft_c", "below temp_hard_c"),
    ("power: {budget: 5}", "settings.power", "unknown key(s) ['budget']"),
    ("power: fp32", "settings.power", "must be a mapping"),
    ("telemetry: {model: {solar_w: sunny}}", "settings.telemetry.model.solar_w", "must be a number"),
    ("telemetry: {model: {panels: 2}}", "settings.telemetry.model", "unknown key(s) ['panels']"),
    ("telemetry: {source: jtopp}", "settings.telemetry.source", "one of"),
    ("telemetry: {eclipses: [[5, 1]]}", "settings.telemetry.eclipses[0]", "end > start"),
    ("health: {stall_s: {wroker: 5}}", "settings.health.stall_s.wroker", "one of ['default', 'ingest', 'worker'"),
    ("health: {stall_s: {worker: 0}}", "settings.health.stall_s.worker", "> 0"),
    ("health: {allow_fault_injection: 'yes'}", "settings.health.allow_fault_injection", "true or false"),
    ("fl: {require_sunlit: 1}", "settings.fl.require_sunlit", "true or false"),
    ("fl: {data: d.npz, priority: 7}", "settings.fl.priority", "scheduler class 0..3"),
    ("max_batch: 2.5", "settings.max_batch", "must be a whole number"),
    ("trusted_keys: k.pub", "settings.trusted_keys", "must be a list"),
    ("workdir: ''", "settings.workdir", "non-empty"),
    ("pipeline: {msi: {stages: [{name: c, bundle: b, threshold: high}]}}",
     "settings.pipeline.msi.stages[0].threshold", "must be a number"),
    ("pipeline: {msi: {stages: [{bundle: b}]}}", "settings.pipeline.msi.stages[0].name", "needs a name"),
    ("pipeline: {msi: {stages: [{name: c, bundle: b, engine: e}]}}", "settings.pipeline.msi.stages[0]",
     "exactly one of 'engine'"),
]


def _write(tmp_path, lines, bundle="/nonexistent-bundle", name="daemon.yaml"):
    path = tmp_path / name
    path.write_text("daemon:\n" + textwrap.indent(f"bundle: {bundle}\n{lines}\n", "  "))
    return str(path)


@pytest.mark.parametrize("lines,key,phrase", BAD, ids=[b[1] for b in BAD])
def test_bad_values_are_refused_at_load_naming_the_key(tmp_path, lines, key, phrase):
    path = _write(tmp_path, lines)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(key) and phrase in message, message
    if "must be" in message:
        assert "Fix:" in message, message         # says how to fix it


def test_toml_values_are_checked_too(tmp_path):
    path = tmp_path / "daemon.toml"
    path.write_text('[daemon]\nbundle = "b"\n[daemon.power]\nvariants = "fp32"\n')
    with pytest.raises(SettingsError, match=r"settings\.power\.variants must be a list; got 'fp32'"):
        load_settings(str(path))
    path.write_text('[daemon]\nbundle = "b"\n[daemon.uplink.transfer]\nack_limit = "many"\n')
    with pytest.raises(SettingsError, match=r"settings\.uplink\.transfer\.ack_limit must be a whole number"):
        load_settings(str(path))


def test_good_values_are_converted_and_round_trip(tmp_path):
    path = _write(tmp_path, textwrap.dedent(f"""\
        max_batch: 8.0
        heartbeat_interval_s: 1e-1
        power: {{temp_soft_c: 70, variants: [fp32, int8], power_scale: {{fp32: 1, int8: 0.5}}}}
        scheduler: {{capacities: [16, 16.0], max_wait_s: 0}}
        outbox: {{lease_s: 5, windows: [[0, 10], [20, 20]]}}
        telemetry: {{source: scripted, temp0_c: 30, readings: [{READING}], model: {{solar_w: 25}}, eclipses: [[1, 2]]}}
        uplink: {{endpoint: "@tcp://127.0.0.1:5999", transfer: {{nak_timer_s: 3, rate_bps: 64000}}}}
        health: {{stall_s: {{worker: 20, uplink: 30}}}}
        fl: {{data: d.npz, priority: 1}}
        """))
    s = load_settings(path)
    assert s.max_batch == 8 and type(s.max_batch) is int
    assert s.heartbeat_interval_s == 0.1
    assert s.power.temp_soft_c == 70.0 and type(s.power.temp_soft_c) is float
    assert s.power.variants == ("fp32", "int8") and s.power.power_scale == {"fp32": 1.0, "int8": 0.5}
    assert s.scheduler.capacities == [16, 16] and all(type(c) is int for c in s.scheduler.capacities)
    assert s.outbox.windows == [[0.0, 10.0], [20.0, 20.0]]
    reading = s.telemetry.readings[0]
    assert reading == {"power_w": 5.0, "temp_c": 40.0, "soc": 0.9, "sunlit": True, "t": 0.0}
    assert all(type(reading[k]) is float for k in ("power_w", "temp_c", "soc", "t"))
    assert s.telemetry.model == {"solar_w": 25.0}
    assert s.uplink.transfer == {"nak_timer_s": 3.0, "rate_bps": 64000.0}
    assert TransferConfig.from_mapping(s.uplink.transfer).nak_timer_s == 3.0
    assert S.stall_timeout(s.health, "worker") == 20.0 and S.stall_timeout(s.health, "fl") == 600.0
    again = load_settings(write_settings(s, str(tmp_path / "again.yaml")))
    assert again.to_mapping() == s.to_mapping()


def test_checks_also_cover_settings_built_in_code():
    with pytest.raises(SettingsError, match=r"settings\.scheduler\.capacities\[1\] must be a whole number > 0"):
        DaemonSettings(bundle="b", scheduler=S.SchedulerSettings(capacities=[4, 0])).validate()
    with pytest.raises(SettingsError, match=r"power\.temp_soft_c must be a number; got 'hot'"):
        PowerPolicy(PowerSettings(temp_soft_c="hot"))
    with pytest.raises(SettingsError, match=r"power\.variants must be a list"):
        PowerPolicy({"variants": "fp32"})
    with pytest.raises(SettingsError, match=r"readings\[0\]: missing key\(s\) \['temp_c'"):
        ScriptedSource([{"power_w": "x"}])
    with pytest.raises(SettingsError, match=r"transfer: unknown key\(s\) \['nosuch'\]"):
        TransferConfig.from_mapping({"nosuch": 3})
    s = DaemonSettings(bundle="b", drain_timeout_s=30, power=PowerSettings(variants=["fp32"])).validate()
    assert type(s.drain_timeout_s) is float and s.power.variants == ("fp32",)


# ---------------------------------------------------------------------------- the daemon process
DAEMON_CASES = [
    # before: TypeError traceback, exit 1 (internal error)
    ("power: {temp_soft_c: hot}", "settings.power.temp_soft_c", "onboard.daemon"),
    # before: Scheduler raised after load: "internal error", exit 1
    ("scheduler: {capacities: [0, 0]}", "settings.scheduler.capacities[0]", "satedge_cli"),
    # before: ValueError traceback in the downlink, exit 1
    ("outbox: {windows: [[5]]}", "settings.outbox.windows[0]", "onboard.daemon"),
    # before: TypeError traceback in the telemetry source, exit 1
    ("telemetry: {source: scripted, readings: [{power_w: x}]}", "settings.telemetry.readings[0]", "satedge_cli"),
    # before: accepted; the uplink stage died three times and the daemon exited 20
    ("uplink: {endpoint: '@ENDPOINT', transfer: {nosuch: 3}}", "settings.uplink.transfer", "onboard.daemon"),
]


@pytest.mark.parametrize("lines,key,entry", DAEMON_CASES, ids=[c[1] for c in DAEMON_CASES])
def test_daemon_process_exits_2_naming_the_key(tmp_path, tiny_bundle, lines, key, entry):
    from sim.processes import free_tcp_endpoint
    eps = "\n".join(f"{n}_endpoint: {free_tcp_endpoint()}" for n in ("sensor", "results", "control", "heartbeat"))
    lines = lines.replace("ENDPOINT", free_tcp_endpoint())
    path = _write(tmp_path, f"workdir: {tmp_path / 'work'}\n{eps}\n{lines}", bundle=tiny_bundle)
    argv = ([sys.executable, "-m", "onboard.daemon", "--config", path] if entry == "onboard.daemon" else
            [sys.executable, "-m", "satedge_cli", "onboard", "run", "--config", path])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:               # it started serving: the value got through
        pytest.fail(f"the daemon kept running with {lines!r}: {exc.stderr}")
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr, proc.stderr
    assert any(w in proc.stderr for w in ("Fix:", "unknown key", "missing key")), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "work" / "ready")          # refused before serving


# ---------------------------------------------------------------------------- docs/onboard.md
def _doc_rows():
    """``{key: default text}`` from every table row of docs/onboard.md whose keys are in backticks."""
    rows = {}
    with open(os.path.join(ROOT, "docs", "onboard.md")) as fh:
        for line in fh:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("| `") or len(cells) < 3:
                continue
            keys = re.findall(r"`([^`]+)`", cells[0])
            defaults = re.findall(r"`[^`]*`|—", cells[1])
            if keys and len(keys) == len(defaults):
                rows.update(zip(keys, defaults))
    return rows


def _same(doc, value):
    if doc == "—":
        return value in ("", [], {}, ())
    parsed = yaml.safe_load(doc.strip("`"))
    if isinstance(value, float) and math.isnan(value):
        return isinstance(parsed, float) and math.isnan(parsed)
    if isinstance(value, tuple):
        value = list(value)
    return parsed == value and (parsed is None) == (value is None)


SECTIONS = [("", DaemonSettings), ("scheduler.", S.SchedulerSettings), ("outbox.", S.OutboxSettings),
            ("telemetry.", S.TelemetrySettings), ("power.", PowerSettings), ("health.", S.HealthSettings),
            ("uplink.", S.UplinkSettings), ("uplink.transfer.", TransferConfig), ("fl.", S.FLSettings),
            ("pipeline.<stream>.", S.StreamSettings), ("stages[].", S.StageSettings)]


def test_docs_give_every_key_with_the_code_default():
    rows = _doc_rows()
    problems = []
    for prefix, cls in SECTIONS:
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = prefix + f.name
            if dataclasses.is_dataclass(default):
                continue                                   # a section: its own table
            if key not in rows:
                problems.append(f"{key}: not documented")
            elif not _same(rows[key], default):
                problems.append(f"{key}: docs say {rows[key]}, code {default!r}")
    known = {p + f.name for p, cls in SECTIONS for f in dataclasses.fields(cls)}
    sections = r"(scheduler|outbox|telemetry|power|health|uplink|fl)\."
    stale = [k for k in rows if re.match(sections, k) and k not in known]
    assert not problems and not stale, problems + [f"{k}: documented but not a key" for k in stale]


def test_docs_list_every_stage_and_its_stall_default():
    text = open(os.path.join(ROOT, "docs", "onboard.md")).read()
    table = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \| `onboard/", text, re.M)}
    assert table == set(S.STAGES), table
    for stage, seconds in S.DEFAULT_STALL_S.items():
        if stage != "default":
            assert re.search(rf"{stage}\s+{seconds:g}\s+s\b", text), f"stall default of {stage} not in the docs"
