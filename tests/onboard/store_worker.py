"""Child process for the engine store's kill tests: install one bundle and exit.

Usage: ``python store_worker.py STORE_ROOT BUNDLE_DIR PUBLIC_KEY``. The parent sets
``SATEDGE_STORE_CRASH_AT=<phase>:<before|after>`` so that the store SIGKILLs this process at that
point (``onboard.store_install._crash_point``); the exit status is then -9 as seen by the parent.
Without the variable it prints the install outcome and exits 0 on success, 1 otherwise.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from onboard.store import EngineStore  # noqa: E402


def main(argv):
    root, bundle, public_key = argv[1:4]
    report = EngineStore(root, [public_key], health_checks=1).install(bundle)
    print(report.outcome, report.reason)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
