"""``satedge onboard doctor``: what the daemon can use here, and what it falls back to."""
import argparse
import json
import subprocess
import sys

import pytest

from engines.runners.devicebuf import gpu_present
from onboard.doctor import add_doctor_parser, diagnose, main, power_rails
from onboard.telemetry import is_jetson

CPU_HOST = not gpu_present()[0] and not is_jetson()


@pytest.mark.skipif(not CPU_HOST, reason="this host has a GPU or is a Jetson; the test describes a CPU-only host")
def test_doctor_on_this_cpu_host_reports_the_fallbacks():
    code = "from onboard.doctor import main; raise SystemExit(main(['--json']))"
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    found = {name: f["found"] for name, f in report["findings"].items()}
    assert found["gpu"] is False and found["tensorrt"] is False and found["dla"] is False
    assert found["nvpmodel"] is False and found["jetson-stats"] is False and found["onnxruntime"] is True
    assert report["jetson"]["l4t"] is None
    backend, power = report["choices"]["backend"], report["choices"]["power"]
    assert backend["use"] == "onnxrt CPU" and backend["fallback"] and backend["setting"] == "backend: onnxrt"
    assert "no GPU" in backend["why"] and "no TensorRT" in backend["why"]
    assert power["use"] == "simulated power model" and power["fallback"] and "not a Jetson" in power["why"]
    assert "tensorrt" not in subprocess.run(
        [sys.executable, "-c", "import sys; from onboard.doctor import diagnose; diagnose(); print(sorted(sys.modules))"],
        stdout=subprocess.PIPE, timeout=120).stdout.decode()      # found, never imported


def test_doctor_text_and_the_gpu_finding_agree_with_gpu_present(capsys):
    assert main([]) in (0, 1)
    text = capsys.readouterr().out
    assert text.startswith("satedge onboard doctor: Python %d.%d" % sys.version_info[:2])
    assert "the daemon will use:" in text and "backend " in text and "power " in text
    assert diagnose().finding("gpu").found is gpu_present()[0]


def _jetson_sysfs(root):
    """An Orin-like (JetPack 5/6 hwmon) and a TX2-like (JetPack 4 iio) INA3221 tree under ``root``."""
    hwmon = root / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    for i, label in enumerate(("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"), 1):
        (hwmon / ("in%d_label" % i)).write_text(label + "\n")
        (hwmon / ("curr%d_input" % i)).write_text("1200\n")
    iio = root / "bus/i2c/drivers/ina3221x/0-0041/iio:device1"
    iio.mkdir(parents=True)
    (iio / "rail_name_0").write_text("VDD_SYS_GPU\n")
    generic = root / "class/hwmon/hwmon7"
    generic.mkdir(parents=True)
    (generic / "name").write_text("ina3221\n")
    (generic / "in1_label").write_text("VDD_IN\n")
    return root


def test_power_rails_are_read_from_ina3221_sysfs(tmp_path):
    assert power_rails(str(tmp_path)) == ([], None)
    rails, where = power_rails(str(_jetson_sysfs(tmp_path / "sys")))
    assert rails == ["VDD_CPU_CV", "VDD_GPU_SOC", "VDD_IN", "VDD_SYS_GPU", "VIN_SYS_5V0"]
    assert where.startswith(str(tmp_path / "sys"))
    report = diagnose(sys_root=str(tmp_path / "sys"), jtop_socket=str(tmp_path / "jtop.sock"))
    assert report.finding("power-rails").found and "VDD_GPU_SOC" in report.finding("power-rails").detail
    if not is_jetson():
        assert report.choices["power"].use == "simulated power model" and "not a Jetson" in report.choices["power"].why


def test_doctor_verb_wires_into_the_onboard_side(capsys):
    parser = argparse.ArgumentParser()
    add_doctor_parser(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--json"])
    assert args.func(args) in (0, 1)
    assert set(json.loads(capsys.readouterr().out)) == {"python", "jetson", "findings", "choices"}
