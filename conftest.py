"""Repository-wide pytest configuration: markers and the shared data path."""
import os
import sys

import pytest

# tests/ holds helper modules shared by the test folders (cli_check.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "shared", "data", "real"))


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data/real; skips with the reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA
