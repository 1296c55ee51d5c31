"""kill -9 of the daemon mid-stream: every result accepted into the outbox reaches the ground exactly once after dedup."""
import os
import signal
import sqlite3
import threading
import time

from daemon_helpers import frame, push_socket, restart, start_daemon, wait_for
from ground.receiver import GroundReceiver
from onboard.control import ControlClient


def _outbox(workdir):
    """(every id ever accepted, ids not yet acknowledged) from the daemon's outbox file."""
    db = sqlite3.connect(os.path.join(workdir, "outbox.sqlite"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT id, state FROM outbox").fetchall()
    finally:
        db.close()
    return {r[0] for r in rows}, {r[0] for r in rows if r[1] != "acked"}


def test_sigkill_mid_stream_loses_no_accepted_result(tiny_bundle, tmp_path):
    d = start_daemon(tmp_path, bundle=tiny_bundle, outbox={"lease_s": 1.0, "drain_ack_s": 10.0})
    s = d.settings
    rx = GroundReceiver(s.results_endpoint, ack_endpoint=s.ack_endpoint)
    push = push_socket(s.sensor_endpoint)
    n_frames, sent = 240, []

    def stream():                                   # a steady sensor, across the crash and the restart
        for i in range(n_frames):
            push.send_multipart(frame(i, size=64 + 32 * (i % 3)))
            sent.append(i)
            time.sleep(0.01)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    wait_for(lambda: rx.poll(100) is not None and len(rx.results) >= 30, what="30 results before the crash")
    time.sleep(0.4)                                  # the ground stops reading: results pile up unacked
    os.kill(d.pid, signal.SIGKILL)
    assert d.wait(timeout=10) == -signal.SIGKILL
    accepted_before, unacked_before = _outbox(s.workdir)
    assert unacked_before, "the crash should leave results the ground has not acknowledged"
    assert len(sent) < n_frames, "the daemon should die mid-stream"

    d2 = restart(d, tmp_path)
    client = ControlClient(s.control_endpoint)
    while sender.is_alive():
        rx.poll(50)

    def delivered():
        rx.poll(100)
        st = client.status()
        return st if st["in_flight"] == 0 and st["outbox"]["depth"] == 0 and st["frames_in"] > 0 else None

    st = wait_for(delivered, timeout=60, what="every result acknowledged after the restart")
    assert st["health"]["restarts_recent"] == 1        # the killed run counts as an unclean exit
    assert d2.stop() == 0
    for _ in range(3):
        rx.poll(100)
    accepted, unacked = _outbox(s.workdir)
    assert not unacked
    assert accepted_before <= accepted
    assert set(rx.results) == accepted                # each accepted result once after dedup, and nothing else
    assert all(rx.arrivals[k] >= 1 for k in accepted)
    print(f"\nkill -9 after {len(accepted_before)} accepted results ({len(unacked_before)} unacknowledged); "
          f"{len(accepted)} results in all, {rx.duplicates} duplicates dropped at the ground; second run: "
          f"{st['frames_processed']} frames processed, {st['results_resent']} results re-sent")
    client.close()
    push.close(0)
    rx.close()
