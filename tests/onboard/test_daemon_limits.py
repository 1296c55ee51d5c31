"""Transport limits of the daemon's input sockets: a runaway sender cannot make it hold gigabytes."""
import time

import numpy as np

from daemon_helpers import frame, push_socket, wait_for
from ground.receiver import GroundReceiver
from onboard.control import ControlClient
from onboard.wire import make_frame


def test_a_part_over_twice_the_payload_limit_is_cut_off_at_the_transport(daemon):
    s = daemon.settings                                         # max_payload_bytes 4 MiB in the fixture
    client = ControlClient(s.control_endpoint)
    rx = GroundReceiver(s.results_endpoint)
    huge = push_socket(s.sensor_endpoint)
    dn = np.ones((6, 1024, 1024), np.uint16)                    # 12 MiB: over twice the limit
    assert dn.nbytes > 2 * s.max_payload_bytes
    huge.send_multipart(make_frame(dn, stream="msi", frame_id=1), copy=False)
    time.sleep(1.0)
    huge.close(0)
    good = push_socket(s.sensor_endpoint)
    good.send_multipart(frame(2))                               # a valid frame from a new connection
    wait_for(lambda: rx.poll(100) is not None and rx.results, what="the good frame's result")
    st = client.status()
    assert st["frames_processed"] == 1 and st["frames_rejected"] == 0      # the huge part never arrived
    assert daemon.alive()
    assert daemon.stop() == 0
    good.close(0)
    client.close()
    rx.close()


def test_an_ack_whose_ids_are_not_strings_is_counted_malformed(tiny_bundle, tmp_path):
    from daemon_helpers import start_daemon
    from onboard.wire import encode
    d = start_daemon(tmp_path, bundle=tiny_bundle)
    client = ControlClient(d.settings.control_endpoint)
    acks = push_socket(d.settings.ack_endpoint)
    acks.send_multipart(encode("ack", {"ids": [1, None, {"x": 1}]}))
    acks.send_multipart(encode("ack", {"ids": ["msi:0:cloud:unknown"]}))      # well formed, acks nothing
    wait_for(lambda: client.status()["acks_malformed"] == 1, what="one malformed ack counted")
    assert client.status()["acks_received"] == 1
    assert d.stop() == 0
    acks.close(0)
    client.close()
