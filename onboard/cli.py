"""``satedge onboard ...``: run the daemon, talk to it, list its exit codes."""
from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    """Add the ``onboard`` side and its verbs to the top-level parser."""
    side = subparsers.add_parser("onboard", help="the daemon on the satellite")
    verbs = side.add_subparsers(dest="verb", metavar="<verb>", required=True)

    run = verbs.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, help="daemon config (.yaml or .toml)")
    run.set_defaults(func=_run)

    status = verbs.add_parser("status", help="ask a running daemon for its status")
    _control_args(status)
    status.set_defaults(func=_status)

    stop = verbs.add_parser("shutdown", help="ask a running daemon to drain and exit")
    _control_args(stop)
    stop.set_defaults(func=_shutdown)

    from onboard.doctor import add_doctor_parser
    add_doctor_parser(verbs)

    codes = verbs.add_parser("exit-codes", help="what each exit code of the daemon means")
    codes.set_defaults(func=_exit_codes)


def _control_args(parser) -> None:
    parser.add_argument("--control", default="tcp://127.0.0.1:5557", help="the daemon's control endpoint")
    parser.add_argument("--control-keys", nargs=2, metavar=("DAEMON_PUB", "OPERATOR_KEY"),
                        help="Curve keys of a daemon started with control_secret_key: its .curve.pub and this "
                             "operator's .curve.key (listed in the daemon's control_client_keys)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply (default 5)")


def _client(args):
    from onboard.control import ControlClient
    server, secret = args.control_keys or (None, None)
    return ControlClient(args.control, args.timeout, server_public_key=server, client_secret_key=secret)


def _run(args) -> int:
    from onboard.daemon import main
    return main(["--config", args.config])


def _status(args) -> int:
    print(json.dumps(_client(args).status(), indent=2))
    return 0


def _shutdown(args) -> int:
    reply = _client(args).request("shutdown")
    print(reply.get("message"))
    return 0 if reply.get("ok") else 1


def _exit_codes(args) -> int:
    from onboard.exitcodes import describe
    print(describe())
    return 0
