"""Repository-wide pytest configuration: markers and the shared data path."""
import os
import shutil

import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "shared", "data", "real"))


def pytest_configure(config):
    for line in (
        "slow: longer end-to-end runs (CI runs them)",
        "gpu: needs a CUDA GPU",
        "tensorrt: needs the TensorRT builder and a GPU",
        "jetson: needs a Jetson (or SATEDGE_HIL_HOST)",
    ):
        config.addinivalue_line("markers", line)


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data/real; skips with the reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA
