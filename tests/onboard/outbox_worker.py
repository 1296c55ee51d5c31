"""Child process for the outbox crash tests; it is killed with SIGKILL at random moments.

``put PATH N SEED``: puts messages ``m00000 … m{N-1}`` with random priorities and payloads and
prints each id on its own line (flushed) only after ``put`` has returned.

``drain PATH SEED``: takes batches from the outbox, prints ``sent <id>`` for each message it
"downlinks", and acks a random part of them (the other acks are "lost"), forever.
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from onboard.outbox import Outbox  # noqa: E402


def put(path: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    box = Outbox(path)
    for i in range(n):
        msg_id = "m%05d" % i
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2048)))
        box.put(msg_id, rng.randint(0, 3), [b"result", b'{"id": "%s"}' % msg_id.encode(), payload])
        sys.stdout.write(msg_id + "\n")
        sys.stdout.flush()


def drain(path: str, seed: int) -> None:
    rng = random.Random(seed)
    box = Outbox(path)
    while True:
        batch = box.next_batch(max_messages=rng.randint(1, 8), max_bytes=8192)
        for item in batch:
            sys.stdout.write("sent %s\n" % item.msg_id)
        sys.stdout.flush()
        box.ack([item.msg_id for item in batch if rng.random() < 0.7])
        box.requeue_expired(0.0)


if __name__ == "__main__":
    if sys.argv[1] == "put":
        put(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        drain(sys.argv[2], int(sys.argv[3]))
