"""The onboard FL client: a round on local data, and the daemon's fl stage end to end.

The end-to-end test is a real daemon process: the round package goes up with the resumable file
transfer (ground.uplink -> the daemon's uplink stage), the round waits while the scripted
telemetry says eclipse (counted as deferred), runs in sunlight, and the encoded update comes down
through the durable outbox as a priority-3 result that the ground decodes and acknowledges.
"""
import os

import numpy as np
import pytest

from engines.errors import UserError
from onboard.fl.client import FLClient, build_model, load_round, write_round
from onboard.fl.codec import decode
from onboard.fl.update import decompress_update

torch = pytest.importorskip("torch")
SIZES = [8, 16, 3]


def _data(tmp_path, seed=0, n=300):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.1 * rng.normal(size=(n, 3)), axis=1)
    path = str(tmp_path / "local.npz")
    np.savez(path, x=x, y=y)
    return path, x, y


def _global(tmp_path, round_no=1, compressor=None):
    torch.manual_seed(0)
    model = build_model({"type": "mlp", "sizes": SIZES})
    params = {k: v.detach().numpy() for k, v in model.named_parameters()}
    cfg = {"model": {"type": "mlp", "sizes": SIZES}, "compressor": compressor or {"name": "dense"},
           "local_steps": 40, "lr": 0.1, "batch_size": 32}
    path = write_round(str(tmp_path / f"fl-round-{round_no}-a.npz"), round_no, params, cfg)
    return path, params


def _loss(params, x, y):
    model = build_model({"type": "mlp", "sizes": SIZES})
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(torch.from_numpy(params[k]))
        return float(torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))


def _apply(params, fields, payload):
    delta = decompress_update(decode(payload), fields["shapes"])
    return {k: params[k] + delta[k] for k in params}


def test_round_trains_compresses_and_encodes(tmp_path):
    data, x, y = _data(tmp_path)
    pkg, params = _global(tmp_path, compressor={"name": "topk", "ratio": 0.25})
    fields, payload = FLClient(data, seed=1).run_round(pkg)
    assert fields["round"] == 1 and fields["num_examples"] == len(x) and fields["compressor"] == "topk"
    assert fields["update_bytes"] == len(payload) and 0 < fields["density"] <= 0.26
    assert _loss(_apply(params, fields, payload), x, y) < _loss(params, x, y)


def test_bad_packages_and_data_are_clear_errors(tmp_path):
    bad = tmp_path / "fl-round-9-x.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(UserError, match="cannot be read"):
        load_round(str(bad))
    with pytest.raises(UserError, match="fl.data"):
        FLClient(str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="not supported"):
        build_model({"type": "transformer"})


def test_daemon_runs_a_deferred_round_and_downlinks_the_update(tiny_bundle, tmp_path):
    from ground.receiver import GroundReceiver
    from ground.uplink import UplinkSender
    from onboard.control import ControlClient
    from onboard.settings import DaemonSettings
    from onboard.transfer import TransferConfig
    from sim.clock import SimClock
    from sim.processes import DaemonProcess, stable_tcp_endpoint
    data, x, y = _data(tmp_path)
    pkg, params = _global(tmp_path, round_no=3)
    eclipse = [{"power_w": 6.0, "temp_c": 30.0, "soc": 0.8, "sunlit": False, "t": float(i)} for i in range(24)]
    sun = [{"power_w": 6.0, "temp_c": 30.0, "soc": 0.8, "sunlit": True, "t": 24.0}]
    eps = {k: stable_tcp_endpoint() for k in ("sensor", "results", "acks", "control", "heartbeat", "uplink")}
    settings = DaemonSettings.from_mapping({
        "bundle": tiny_bundle, "workdir": str(tmp_path / "daemon"), "sensor_endpoint": eps["sensor"],
        "results_endpoint": eps["results"], "ack_endpoint": eps["acks"], "control_endpoint": eps["control"],
        "heartbeat_endpoint": eps["heartbeat"], "intra_op_threads": 1, "outbox": {"lease_s": 2.0},
        "telemetry": {"source": "scripted", "interval_s": 0.25, "readings": eclipse + sun},
        "uplink": {"endpoint": "@" + eps["uplink"]}, "fl": {"data": data, "client_id": "sat7"}})
    proc = DaemonProcess(settings, str(tmp_path / "daemon.yaml"))
    proc.wait_ready(60)
    rx = GroundReceiver(eps["results"], ack_endpoint=eps["acks"], keep_buffers=True)
    sender = UplinkSender(eps["uplink"], TransferConfig(), SimClock.wall())
    try:
        res = sender.send(pkg, timeout_s=60)
        assert res.ok, res
        for _ in range(300):
            rx.poll(100)
            if rx.results:
                break
        key, header = next(iter(rx.results.items()))
        assert header["stage"] == "fl_update" and header["priority"] == 3 and header["round"] == 3
        assert key == "fl:sat7:round3"
        payload = rx.buffers[key][0]
        assert _loss(_apply(params, header, payload), x, y) < _loss(params, x, y)
        with ControlClient(eps["control"]) as c:
            fl = c.status()["fl"]
        assert fl["rounds"] == 1 and fl["deferred"] == 1 and fl["failed"] == 0, fl
    finally:
        sender.close()
        rx.close()
        code = proc.stop(timeout=30)
    assert code == 0, proc.log_tail()
    assert os.path.exists(tmp_path / "daemon" / "fl" / "round-3.json")
