"""File uplink (CFDP-class-2-like) over the link emulator: PDUs, CRCs, resumption, kill -9, efficiency."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from ground.uplink import UplinkSender, file_sha256
from onboard import wire
from onboard.transfer import TransferConfig, TransferReceiver, add_range, make_pdu, missing, parse_pdu
from sim.clock import SimClock
from sim.link import LinkEmulator, LinkParams

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATE_BPS = 256e3                 # S-band uplink, low end (METHODS.md: 0.25-1 Mbit/s)
FACTOR = 20.0                    # sim seconds per wall second
WINDOWS = [(5.0, 30.0), (90.0, 115.0), (175.0, 200.0), (260.0, 285.0), (345.0, 370.0), (430.0, 455.0)]
EFFICIENCY_GOAL = 0.7
ANY = "tcp://127.0.0.1:*"


class ManualClock:
    """A clock that only moves when the test says so."""

    factor, t = 1.0, 0.0

    def now(self):
        return self.t


def _tiny_model(path):
    from onnx import TensorProto, helper, save
    w = np.full((1, 3, 1, 1), 0.5, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, path)


@pytest.fixture(scope="module")
def bundle_tar(tmp_path_factory):
    """A real signed bundle tar (tiny ONNX model + 1.4 MB of weights-like random bytes) and its key."""
    pytest.importorskip("onnx")
    from engines.archive import pack_archive
    from engines.bundle import pack_bundle
    from engines.manifest import TensorSpec
    from engines.signing import generate_keypair, sign_bundle
    root = tmp_path_factory.mktemp("bundle")
    _tiny_model(str(root / "m.onnx"))
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    y = (x.sum(axis=1, keepdims=True) * 0.5).astype(np.float32)
    bundle = pack_bundle(str(root / "tiny"), name="tiny", version=1, model_path=str(root / "m.onnx"), precision="fp32",
                         inputs=[TensorSpec("x", "float32", ("N", 3, 8, 8))],
                         outputs=[TensorSpec("y", "float32", ("N", 1, 8, 8))],
                         reference_inputs={"x": x}, reference_outputs={"y": y},
                         extra_files={"aux/weights.bin": np.random.default_rng(1).bytes(1_400_000)})
    private, public = generate_keypair(str(root / "keys"))
    sign_bundle(bundle.path, private)
    return str(pack_archive(bundle.path, root / "tiny-v1.tar")), str(public)


def test_pdu_roundtrip_and_every_single_bit_flip_is_caught():
    parts = make_pdu("data", "abc123", b"\x01\x02" * 100, offset=4096)
    h, data = parse_pdu(parts)
    assert (h["pdu"], h["txn"], h["offset"], data) == ("data", "abc123", 4096, b"\x01\x02" * 100)
    flat = [bytes(p) for p in parts]
    accepted_same = rejected = 0
    for i, part in enumerate(flat):
        for bit in range(8 * len(part)):
            bad = bytearray(part)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                h2, d2 = parse_pdu(flat[:i] + [bytes(bad)] + flat[i + 1:])
            except wire.WireError:
                rejected += 1
                continue
            accepted_same += 1      # only the topic, id and ts are outside the CRC: the PDU itself is intact
            assert (h2["pdu"], h2["txn"], h2["offset"], d2) == ("data", "abc123", 4096, b"\x01\x02" * 100)
    assert rejected > 0.8 * (rejected + accepted_same)


def test_ranges():
    r = []
    assert add_range(r, 10, 20) and add_range(r, 30, 40) and add_range(r, 20, 30)
    assert r == [[10, 40]] and not add_range(r, 15, 25)
    assert missing(r, 50) == [[0, 10], [40, 50]] and missing([], 0) == []


def test_garbage_is_counted_never_crashes(tmp_path):
    rx = TransferReceiver("inproc://nobody", str(tmp_path / "s"), str(tmp_path / "o"), clock=SimClock.wall())
    good = make_pdu("metadata", "t1", name="f.bin", size=10, sha256="0" * 64, chunk=4)
    header = bytes(good[1])
    garbage = [[b"transfer"], [b"transfer", header[:7]], [b"transfer", b"\xc1"], [b"transfer", msgpack.packb([1, 2])],
               [b"transfer", header, b"x", b"y"], make_pdu("data", "../etc", b"x", offset=0),
               make_pdu("data", "t2", b"x", offset=-5), make_pdu("data", "t2", b"x" * 10, offset=1 << 40),
               make_pdu("metadata", "t3", name="../evil", size=1, sha256="0" * 64, chunk=1),
               make_pdu("nak", "t4", ranges=[[0, 1]]), make_pdu("data", "t5", b"", offset=0)]
    for parts in garbage:
        rx._handle([bytes(p) for p in parts], 0.0)
    rejected = sum(v for k, v in rx.stats.items() if k.startswith("rejected_"))
    assert rejected + rx.stats["unknown_txn"] + rx.stats["refused"] == len(garbage), dict(rx.stats)
    rx.close()


def test_receiver_refuses_fails_and_starts_over(tmp_path):
    done, clock = [], ManualClock()
    rx = TransferReceiver("@inproc://rx-refuse", str(tmp_path / "s"), str(tmp_path / "o"), done.append,
                          TransferConfig(max_file_size=1000), clock)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.connect("inproc://rx-refuse")

    def exchange(*pdus):
        for p in pdus:
            peer.send_multipart(p)
        while rx.poll(0.05):
            pass
        out = []
        while peer.poll(50):
            out.append(parse_pdu(peer.recv_multipart())[0])
        return [(h["pdu"], h.get("status") or h.get("of")) for h in out]

    assert exchange(make_pdu("metadata", "big", name="a.bin", size=5000, sha256="0" * 64, chunk=100)) == \
        [("finished", "refused")]
    assert exchange(make_pdu("ack", "big", of="finished")) == []
    body, sha = b"0123456789", hashlib.sha256(b"0123456789").hexdigest()
    assert exchange(make_pdu("metadata", "t", name="f.bin", size=10, sha256="f" * 64, chunk=8),
                    make_pdu("data", "t", body[:8], offset=0), make_pdu("eof", "t", size=10, sha256="f" * 64)) == \
        [("ack", "eof"), ("nak", None)]
    assert exchange(make_pdu("data", "t", body[8:], offset=8)) == [("finished", "checksum_failure")]
    assert not os.listdir(tmp_path / "o") and not done
    assert exchange(make_pdu("metadata", "t", name="f.bin", size=10, sha256=sha, chunk=8),
                    make_pdu("data", "t", body[8:], offset=8), make_pdu("data", "t", body[:8], offset=0),
                    make_pdu("eof", "t", size=10, sha256=sha)) == [("ack", "eof"), ("finished", "ok")]
    assert done == [str(tmp_path / "o" / "f.bin")] and (tmp_path / "o" / "f.bin").read_bytes() == body
    clock.t += 2.0                                      # FINISHED is repeated at most every ack_timer_s / 2
    assert exchange(make_pdu("eof", "t", size=10, sha256=sha)) == [("finished", "ok")]
    clock.t += 2.0
    assert exchange(make_pdu("ack", "t", of="finished")) == []
    clock.t += 10.0
    assert exchange() == [] and rx.stats["completed"] == 1 and rx.stats["sent_finished"] == 4
    peer.close(0)
    rx.close()


def test_unpaced_uplink_over_a_clean_link(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(np.random.default_rng(2).bytes(300_000))
    done, stop = [], threading.Event()
    cfg = TransferConfig(chunk_size=8192, ack_timer_s=0.2, nak_timer_s=0.2)    # wall-clock seconds here
    with LinkEmulator(ANY, ANY, None, LinkParams(latency_s=0.01), SimClock.wall(), seed=1) as link:
        rx = TransferReceiver(link.back, str(tmp_path / "s"), str(tmp_path / "o"), done.append, cfg, SimClock.wall())
        for off in range(0, 150_000, 8192):         # a first sender got half of it across, then died
            rx._handle(make_pdu("data", "half", src.read_bytes()[off:off + 8192], offset=off), 0.0)
        th = threading.Thread(target=rx.run, args=(stop,))
        th.start()
        sender = UplinkSender(link.front, cfg, SimClock.wall())
        try:
            res = sender.send(str(src), name="copy.bin", timeout_s=30)
            again = sender.send(str(src), name="copy.bin", timeout_s=30, resume=True)
            resumed = sender.send(str(src), name="half.bin", txn="half", timeout_s=30, resume=True)
        finally:
            stop.set()
            th.join()
            sender.close()
            rx.close()
    assert res.ok and res.retransmitted_bytes == 0 and res.pdus_sent == 1 + 37 + 1 + 1    # metadata, data, EOF, ACK
    assert again.ok and again.data_bytes_sent == 0                  # it is already there: FINISHED at once
    assert resumed.ok and resumed.data_bytes_sent == 300_000 - 155_648 and resumed.retransmitted_bytes == 0
    assert done == [str(tmp_path / "o" / n) for n in ("copy.bin", "half.bin")]
    assert file_sha256(done[0]) == file_sha256(done[1]) == file_sha256(str(src))
    print(f"\nclean link: efficiency {res.efficiency:.3f} with 8 KiB chunks")


def _start_receiver(endpoint, tmp_path, clock, cfg, log_name):
    env = clock.to_env()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "onboard.transfer", "--endpoint", endpoint, "--state-dir", str(tmp_path / "state"),
            "--out-dir", str(tmp_path / "out"), "--windows", json.dumps(WINDOWS), "--stats", str(tmp_path / "rx.json"),
            "--config", json.dumps({"sync_every": cfg.sync_every})]
    log = open(tmp_path / log_name, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, log


def _uplink_with_kill(tmp_path, bundle_tar, kill_at, seed):
    """Uplink ``bundle_tar`` over a 20 %-loss link; kill -9 and restart the receiver at sim time ``kill_at``."""
    clock = SimClock(0.0, factor=FACTOR, start_s=-20.0)         # 1 s of wall time to start the receiver
    params = LinkParams(rate_bps=RATE_BPS, latency_s=1.0, jitter_s=0.05, loss=0.2, duplicate=0.05,
                        reorder=0.05, reorder_delay_s=0.5, ber=1e-6)
    cfg = TransferConfig(rate_bps=RATE_BPS)
    link = LinkEmulator("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", WINDOWS, params, clock, seed).start()
    proc, log = _start_receiver(link.back, tmp_path, clock, cfg, "rx1.log")
    while "ready" not in (tmp_path / "rx1.log").read_text() and proc.poll() is None:
        time.sleep(0.01)
    assert clock.now() < WINDOWS[0][0], "the receiver took too long to start"
    result, stop = {}, threading.Event()
    sender = UplinkSender(link.front, cfg, clock, WINDOWS)
    th = threading.Thread(target=lambda: result.update(r=sender.send(bundle_tar, timeout_s=WINDOWS[-1][1], stop=stop),
                                                       end=clock.now()))
    th.start()
    try:
        clock.sleep_until(kill_at)
        assert proc.poll() is None, (tmp_path / "rx1.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        killed_at = clock.now()
        proc, log = _start_receiver(link.back, tmp_path, clock, cfg, "rx2.log")
        th.join(timeout=120)
        assert not th.is_alive()
        clock.sleep(3.0)                                # let the last ACK(finished) land before stopping
    finally:
        stop.set()
        th.join()
        sender.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        stats = link.stop()
    return result["r"], stats, killed_at, result["end"]


@pytest.mark.parametrize("where", ["gap", "mid-window"])
def test_uplink_survives_loss_passes_and_kill9(tmp_path, bundle_tar, where):
    """1.5 MB bundle tar, 20 % loss + duplicates + reordering + bit errors, >= 3 passes, receiver kill -9."""
    tar, public = bundle_tar
    kill_at = {"gap": 60.0, "mid-window": 100.0}[where]
    t0 = time.time()
    res, stats, killed_at, end = _uplink_with_kill(tmp_path, tar, kill_at, seed=7)
    wall = time.time() - t0
    out = tmp_path / "out" / os.path.basename(tar)
    assert res.ok, (res, stats, (tmp_path / "rx2.log").read_text())
    assert file_sha256(str(out)) == file_sha256(tar)
    rx2 = (tmp_path / "rx2.log").read_text()
    assert '"resumed": 1' in rx2 and f"complete {out}" in rx2
    passes = sum(1 for a, b in WINDOWS if a < end)
    up = stats["up"]
    eff_total = res.size / (up["offered_bytes"] + stats["down"]["offered_bytes"])
    print(f"\nuplink ({where} kill at sim {killed_at:.0f} s): {res.size} B in {res.duration_s:.0f} sim s over {passes} "
          f"passes ({wall:.1f} s wall); sent {res.bytes_sent} B in {res.pdus_sent} PDUs, retransmitted "
          f"{res.retransmitted_bytes} B, {res.naks_received} NAKs, {res.eof_sent} EOFs; link lost "
          f"{up['dropped']['loss']['msgs']}/{up['offered_msgs']}, corrupted {up['corrupted_msgs']}, duplicated "
          f"{up['duplicated']}, no peer {up['no_peer_msgs']}; efficiency {res.efficiency:.3f} (uplink), "
          f"{eff_total:.3f} (both directions)")
    assert passes >= 3
    assert up["offered_bytes"] == res.bytes_sent
    if where == "gap":
        assert res.efficiency >= EFFICIENCY_GOAL
    # the daemon's on_complete: extract the tar and install it into the engine store
    from engines.archive import extract_archive
    from onboard.store import EngineStore
    report = EngineStore(tmp_path / "store", trusted_keys=[public]).install(extract_archive(out, tmp_path / "x"))
    assert report.ok, report.reason
