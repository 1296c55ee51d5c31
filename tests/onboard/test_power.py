"""Power policy through a simulated orbit (eclipse, thermal limits), hysteresis, and the telemetry sources."""
import math

import pytest

from engines.errors import UserError
from onboard.power import PolicyDecision, PowerPolicy, PowerSettings
from onboard.telemetry import (JtopSource, PowerModelParams, ScriptedSource, SimulatedPowerModel, Telemetry,
                               is_jetson)


def _fly(model, policy, seconds, step_s=10.0, deferred_load=0.4):
    """The daemon's loop in miniature: read, decide, run the chosen variant (less work when deferring)."""
    log = []
    for _ in range(int(seconds / step_s)):
        tel = model.read()
        decision = policy.decide(tel, {"depth": 3})
        log.append((tel, decision))
        model.set_activity(deferred_load if decision.defer_priorities_at_or_below is not None else 1.0,
                           decision.variant)
        model.advance(step_s)
    return log


def test_eclipse_and_soft_thermal_limit_switch_variant_and_defer():
    """Full load late in the sunlit arc, then eclipse with a battery that runs low, then sunlight again."""
    model = SimulatedPowerModel(t0=3000.0, soc0=0.35, temp0_c=60.0)         # eclipse starts at t = 3648 s
    events = []
    policy = PowerPolicy({"power_budget_w": 20.0}, on_event=events.append)
    log = _fly(model, policy, 3000.0)
    assert list(policy.events) == events
    soft = next(e for e in events if e.kind == "variant")
    assert (soft.old, soft.new) == ("fp32", "int8") and "soft limit" in soft.reason
    assert soft.telemetry["sunlit"] and soft.telemetry["temp_c"] > 75.0 and soft.queue_state == {"depth": 3}
    defer = next(e for e in events if e.kind == "defer")
    assert (defer.old, defer.new) == (None, 2) and "eclipse" in defer.reason
    assert not defer.telemetry["sunlit"] and defer.telemetry["soc"] < 0.30
    dla = next(e for e in events if e.kind == "variant" and e.t == defer.t)
    assert dla.new == "dla-int8" and "eclipse" in dla.reason
    resume = next(e for e in events if e.kind == "defer" and e.t > defer.t)
    assert resume.new is None and resume.telemetry["sunlit"] and "sunlight" in resume.reason
    in_dark = [d for tel, d in log if not tel.sunlit and defer.t <= tel.t < resume.t]
    assert in_dark and all(d.defers(2) and d.defers(3) and not d.defers(1) and d.variant == "dla-int8"
                           for d in in_dark)
    assert max(tel.temp_c for tel, _ in log) < 90.0                        # never near the hard limit
    variant_changes = [e for e in events if e.kind == "variant"]
    assert len(variant_changes) <= 6                                         # no flapping over an orbit


def test_hard_thermal_limit_defers_all_but_critical_until_it_cools():
    """A radiator in the sun at 65 °C: even the lightest variant reaches the hard limit."""
    model = SimulatedPowerModel(PowerModelParams(sink_sunlit_c=65.0, eclipse_fraction=0.5), soc0=0.9)
    policy = PowerPolicy({"power_budget_w": 20.0})
    log = _fly(model, policy, 5700.0, deferred_load=0.3)
    kinds = [(e.kind, e.old, e.new) for e in policy.events]
    assert kinds[:3] == [("variant", "fp32", "int8"), ("variant", "int8", "dla-int8"), ("defer", None, 1)]
    hot = policy.events[2]
    assert hot.telemetry["temp_c"] >= 90.0 and "hard limit" in hot.reason
    cool = next(e for e in policy.events if e.kind == "defer" and e.new is None)
    assert cool.telemetry["temp_c"] < 80.0 and not cool.telemetry["sunlit"]   # hysteresis: 10 K below the limit
    assert all(d.defer_priorities_at_or_below == 1 for tel, d in log if hot.t <= tel.t < cool.t)
    assert max(tel.temp_c for tel, _ in log) < 91.0
    assert [e.new for e in policy.events if e.kind == "variant"][-1] == "fp32"  # back to full precision, cold


def _tel(t, power=8.0, temp=50.0, soc=0.8, sunlit=True):
    return Telemetry(power, temp, soc, sunlit, t)


def test_hysteresis_noise_around_every_threshold_does_not_flap():
    policy = PowerPolicy({"min_dwell_s": 0.0, "settle_s": 0.0})
    scale = policy.settings.power_scale
    for t in range(50):                                 # fp32 draws 10 +- 0.3 W against a 10 W budget
        watts = (10.3 if t % 2 else 9.7) * scale[policy.decision.variant]
        policy.decide(_tel(t, power=watts))
    assert [(e.old, e.new) for e in policy.events] == [("fp32", "int8")]    # back to fp32 needs <= 9 W
    policy = PowerPolicy({"power_budget_w": 50.0, "min_dwell_s": 0.0, "settle_s": 0.0})
    for t in range(50):
        policy.decide(_tel(t, power=6.0, temp=89.5 if t % 2 else 90.5))    # around the hard limit
    assert [(e.kind, e.new) for e in policy.events] == [("variant", "dla-int8"), ("defer", 1)]
    policy.decide(_tel(50, power=6.0, temp=30.0))
    policy.events.clear()
    for t in range(51, 100):                                                 # around the low-battery level
        policy.decide(_tel(t, power=6.0, temp=30.0, soc=0.29 if t % 2 else 0.31, sunlit=False))
    assert [(e.kind, e.new) for e in policy.events] == [("variant", "dla-int8"), ("defer", 2)]


def test_power_budget_steps_lighter_then_back_after_dwell():
    policy = PowerPolicy({"power_budget_w": 10.0, "min_dwell_s": 60.0})
    assert policy.decision == PolicyDecision("fp32", None, "nominal")
    assert policy.decide(_tel(0, power=14.0)).variant == "int8"
    assert policy.decide(_tel(2, power=9.5)).variant == "int8"              # settling: no second step yet
    assert policy.decide(_tel(30, power=5.0)).variant == "int8"             # headroom, but dwell not over
    d = policy.decide(_tel(61, power=5.0))
    assert d.variant == "fp32" and "headroom" in d.reason
    assert policy.decide(_tel(62, power=7.0, temp=60.0)).variant == "fp32"
    assert PowerPolicy({"variants": ["fp32", "int8"]}).decide(_tel(0, temp=95.0)).variant == "int8"  # no DLA (TX2)


def test_settings_are_checked():
    with pytest.raises(UserError, match="unknown key"):
        PowerPolicy({"budget": 5})
    with pytest.raises(UserError, match="temp_soft_c"):
        PowerSettings(temp_soft_c=95.0).validate()
    with pytest.raises(UserError, match="power_scale"):
        PowerSettings(variants=("fp16",)).validate()


def test_simulated_power_model_physics():
    p = PowerModelParams()
    model = SimulatedPowerModel(p, soc0=0.5)
    sunlit = sum(model.sunlit(t) for t in range(0, int(p.orbit_period_s)))
    assert sunlit / p.orbit_period_s == pytest.approx(1 - p.eclipse_fraction, abs=1e-3)
    model.set_activity(1.0, "fp32")
    model.advance(1000.0)                                                    # sunlit all along: +10 W net
    assert model.read().soc == pytest.approx(0.5 + 10.0 * 1000 / 3600 / p.battery_wh, rel=1e-9)
    model.advance(2500.0)                                                    # 8 time constants, still sunlit
    assert model.read().temp_c == pytest.approx(p.sink_sunlit_c + 14.0 * p.thermal_resistance_k_per_w, abs=0.1)
    model.set_activity(0.5, "int8")
    assert model.read().power_w == pytest.approx(6.5)
    full = SimulatedPowerModel(soc0=1.0)
    full.advance(600.0)
    assert full.read().soc == 1.0                                            # charge is clipped
    dark = SimulatedPowerModel(soc0=0.01, sunlit_at=lambda t: False)
    dark.advance(3600.0)
    assert dark.read().soc == 0.0 and not dark.read().sunlit
    with pytest.raises(UserError):
        model.set_activity(1.0, "fp16")


def test_scripted_source_and_jtop_off_jetson():
    src = ScriptedSource([{"power_w": 1.0, "temp_c": 2.0, "soc": 0.5, "sunlit": False, "t": 0.0}, _tel(1.0)])
    assert src.read().power_w == 1.0 and src.read().t == 1.0 and src.read().t == 1.0   # repeats the last
    with pytest.raises(UserError):
        ScriptedSource([])
    if is_jetson():
        pytest.skip("on a Jetson: the jetson-marked HIL tests exercise JtopSource")
    with pytest.raises(UserError, match="not a Jetson"):
        JtopSource()


@pytest.mark.jetson
def test_jtop_reads_a_real_jetson():
    if not is_jetson():
        pytest.skip("needs a Jetson with jetson-stats running")
    src = JtopSource()
    try:
        tel = src.read()
    finally:
        src.close()
    assert tel.power_w > 0 and 0 < tel.temp_c < 120 and math.isnan(tel.soc) and tel.sunlit
