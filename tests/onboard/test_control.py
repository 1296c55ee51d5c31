"""The control channel over real sockets: CurveZMQ allow-list, replay protection, ok-or-error replies."""
import argparse
import json
import os
import threading

import pytest
import zmq

from engines.errors import UserError
from onboard.control import ControlClient
from onboard.control_server import ControlServer, UnknownCommand
from onboard.curve import (authorized_keys_dir, generate_curve_keypair, load_authorized_keys, load_curve_public,
                           load_curve_secret, public_from_secret)
from onboard.wire import decode, encode
from sim.processes import free_tcp_endpoint as free_endpoint

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CURVE")
TIMEOUT_S = 1.0


class Recorder:
    """A small handler: ping, echo, boom (raises), refuse (a UserError); records what it ran."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd, args, header):
        self.calls.append((cmd, args, header["client_key"]))
        if cmd == "ping":
            return {"message": "pong"}
        if cmd == "echo":
            return {"echo": args}
        if cmd == "boom":
            raise RuntimeError("handler bug")
        if cmd == "refuse":
            raise UserError("no such engine 'x'; installed: cloudscreen")
        raise UnknownCommand(cmd, ["boom", "echo", "ping", "refuse"])


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    server = generate_curve_keypair(d, "daemon")
    ops = generate_curve_keypair(d, "ops")
    rogue = generate_curve_keypair(d, "rogue")
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    (allowed / "ops.curve.pub").write_bytes(ops[1].read_bytes())
    return {"server": server, "ops": ops, "rogue": rogue, "authorized": allowed, "state": tmp_path / "replay.json"}


class Running:
    """A ControlServer served from a background thread, as the daemon's control thread does."""

    def __init__(self, endpoint, keys, handler, **kw):
        self.server = ControlServer(None, endpoint, server_secret_key=keys["server"][0], handler=handler,
                                    authorized_client_keys=[keys["authorized"]], state_path=keys["state"], **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.run, args=(self.stop, 20), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def served(keys):
    handler, endpoint = Recorder(), free_endpoint()
    running = Running(endpoint, keys, handler)
    yield endpoint, handler, running
    running.close()


def client_for(endpoint, keys, who="ops", **kw):
    return ControlClient(endpoint, TIMEOUT_S, server_public_key=keys["server"][1],
                         client_secret_key=keys[who][0], **kw)


def send_raw(client, header):
    """Send a hand-built command (to replay a nonce or a counter) and wait for the reply."""
    client.sock.send_multipart(encode("command", header))
    assert client.sock.poll(int(TIMEOUT_S * 1000)), "no reply"
    return decode(client.sock.recv_multipart()).header


def test_key_files_round_trip_and_cli_format(tmp_path, keys):
    from engines.cli import add_parsers
    secret, public = keys["ops"]
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert public_from_secret(load_curve_secret(secret)) == load_curve_public(public)
    with pytest.raises(UserError, match="never overwritten"):
        generate_curve_keypair(tmp_path / "keys", "ops")
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="side"))
    args = parser.parse_args(["keys", "gen", "--curve", "--out", str(tmp_path / "cli"), "--name", "alice"])
    assert args.func(args) == 0
    cli_secret, cli_public = tmp_path / "cli" / "alice.curve.key", tmp_path / "cli" / "alice.curve.pub"
    assert os.stat(cli_secret).st_mode & 0o777 == 0o600
    assert public_from_secret(load_curve_secret(cli_secret)) == load_curve_public(cli_public)
    assert authorized_keys_dir(tmp_path / "cli") == [load_curve_public(cli_public)]
    z85 = load_curve_public(cli_public)
    assert load_authorized_keys([z85.decode(), cli_public, tmp_path / "cli"]) == [z85]


def test_admitted_client_gets_ok_and_its_key_reaches_the_handler(served, keys):
    endpoint, handler, _ = served
    with client_for(endpoint, keys) as client:
        reply = client.request("ping")
        assert reply["ok"] is True and reply["code"] == "OK" and reply["message"] == "pong"
        assert client.request("echo", engine="cloudscreen", slot="b")["echo"] == {"engine": "cloudscreen", "slot": "b"}
    assert handler.calls[0] == ("ping", {}, load_curve_public(keys["ops"][1]).decode())


@pytest.mark.parametrize("who", ["rogue", "plain", "wrong-server-key"])
def test_unlisted_key_or_no_curve_gets_no_reply_and_runs_nothing(served, keys, who):
    endpoint, handler, _ = served
    if who == "plain":
        client = ControlClient(endpoint, TIMEOUT_S)
    elif who == "wrong-server-key":
        client = ControlClient(endpoint, TIMEOUT_S, server_public_key=keys["rogue"][1],
                               client_secret_key=keys["ops"][0])
    else:
        client = client_for(endpoint, keys, who)
    with client, pytest.raises(UserError, match="no reply"):
        client.request("ping")
    assert handler.calls == []


def test_a_req_socket_is_answered_too(served, keys):
    endpoint, _, _ = served
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.curve_serverkey = load_curve_public(keys["server"][1])
    secret = load_curve_secret(keys["ops"][0])
    req.curve_secretkey, req.curve_publickey = secret, public_from_secret(secret)
    req.connect(endpoint)
    req.send_multipart(encode("command", {"cmd": "ping", "args": {}, "nonce": "9a" * 16, "counter": 1}))
    assert req.poll(int(TIMEOUT_S * 1000))
    assert decode(req.recv_multipart()).header["message"] == "pong"
    req.close()


def test_replayed_nonce_and_stale_counter_are_refused(served, keys):
    endpoint, handler, _ = served
    with client_for(endpoint, keys) as client:
        first = {"cmd": "ping", "args": {}, "nonce": "ab" * 16, "counter": 10}
        assert send_raw(client, first)["ok"] is True
        again = send_raw(client, dict(first, counter=11))
        assert again["ok"] is False and again["code"] == "E_REPLAY" and "nonce" in again["message"]
        stale = send_raw(client, dict(first, nonce="cd" * 16, counter=10))
        assert stale["code"] == "E_REPLAY" and "counter" in stale["message"]
        missing = send_raw(client, {"cmd": "ping", "args": {}})
        assert missing["ok"] is False and missing["code"] == "E_FIELD"
        assert client.request("ping")["ok"] is True                 # the client's own counter is far ahead
    assert [c[0] for c in handler.calls] == ["ping", "ping"]


def test_a_huge_counter_is_refused_and_a_client_behind_the_daemon_catches_up(served, keys):
    endpoint, handler, _ = served
    with client_for(endpoint, keys) as client:
        for counter in (2 ** 62, 2 ** 64 - 1):                 # would use up the key's counter space
            huge = send_raw(client, {"cmd": "ping", "args": {}, "nonce": "%032x" % counter, "counter": counter})
            assert huge["ok"] is False and huge["code"] == "E_FIELD" and "2**62" in huge["message"]
        ahead = 2 ** 62 - 2 ** 40                              # another process of this key, far ahead
        assert send_raw(client, {"cmd": "ping", "args": {}, "nonce": "ef" * 16, "counter": ahead})["ok"] is True
        stale = send_raw(client, {"cmd": "ping", "args": {}, "nonce": "fe" * 16, "counter": 7})
        assert stale["code"] == "E_REPLAY" and stale["last_counter"] == ahead
        reply = client.request("ping")                         # told last_counter, it goes above it once
        assert reply["ok"] is True and client._last == ahead + 1
    assert [c[0] for c in handler.calls] == ["ping", "ping"]


def test_replay_is_refused_after_a_server_restart(keys):
    endpoint, handler = free_endpoint(), Recorder()
    command = {"cmd": "ping", "args": {}, "nonce": "0f" * 20, "counter": 5}
    running = Running(endpoint, keys, handler)
    with client_for(endpoint, keys) as client:
        assert send_raw(client, command)["ok"] is True
    running.close()
    running = Running(endpoint, keys, handler)
    try:
        with client_for(endpoint, keys) as client:
            assert send_raw(client, command)["code"] == "E_REPLAY"
            assert send_raw(client, dict(command, nonce="1e" * 20))["code"] == "E_REPLAY"   # counter 5 again
            assert send_raw(client, dict(command, nonce="2d" * 20, counter=6))["ok"] is True
    finally:
        running.close()
    assert len(handler.calls) == 2


def test_unknown_command_refusal_and_handler_failure_are_errors_and_serving_goes_on(served, keys):
    endpoint, handler, _ = served
    with client_for(endpoint, keys) as client:
        unknown = client.request("self-destruct")
        assert unknown["ok"] is False and unknown["code"] == "E_COMMAND" and "known: boom, echo" in unknown["message"]
        refused = client.request("refuse")
        assert refused["code"] == "E_COMMAND" and "installed: cloudscreen" in refused["message"]
        boom = client.request("boom")
        assert boom["ok"] is False and boom["code"] == "E_INTERNAL" and "handler bug" in boom["message"]
        assert client.request("ping")["ok"] is True


def test_client_counter_file_keeps_counters_increasing(served, keys, tmp_path):
    endpoint, _, _ = served
    path = tmp_path / "counter.json"
    with client_for(endpoint, keys, counter_path=path) as client:
        assert client.request("ping")["ok"] is True
    last = json.loads(path.read_text())[client.client_key]
    path.write_text(json.dumps({client.client_key: last + 10 ** 15}))     # as if the clock had stepped back
    with client_for(endpoint, keys, counter_path=path) as client:
        assert client.request("ping")["ok"] is True
    assert json.loads(path.read_text())[client.client_key] == last + 10 ** 15 + 1


def test_configuration_mistakes_are_user_errors(keys):
    endpoint = free_endpoint()
    with pytest.raises(UserError, match="needs a CurveZMQ server key"):
        ControlServer(None, endpoint, handler=Recorder())
    with pytest.raises(UserError, match="no authorized control client keys"):
        ControlServer(None, endpoint, handler=Recorder(), server_secret_key=keys["server"][0])
    with pytest.raises(UserError, match="does not belong"):
        ControlServer(None, endpoint, handler=Recorder(), server_secret_key=keys["server"][0],
                      server_public_key=keys["ops"][1], authorized_client_keys=[keys["ops"][1]])
    keys["state"].write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        ControlServer(None, endpoint, handler=Recorder(), server_secret_key=keys["server"][0],
                      authorized_client_keys=[keys["ops"][1]], state_path=keys["state"])
    with pytest.raises(UserError, match="both"):
        ControlClient(endpoint, server_public_key=keys["server"][1])


def test_insecure_mode_serves_plain_clients(tmp_path):
    endpoint, handler = free_endpoint(), Recorder()
    server = ControlServer(None, endpoint, handler=handler, insecure=True, state_path=tmp_path / "s.json")
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop, 20), daemon=True)
    thread.start()
    try:
        with ControlClient(endpoint, TIMEOUT_S) as client:
            assert client.request("ping")["message"] == "pong"
            assert client.request("ping")["ok"] is True
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert [c[2] for c in handler.calls] == ["anonymous", "anonymous"]
