"""satedge: an onboard satellite edge-computing runtime."""
from setuptools import find_packages, setup

ONBOARD = ["numpy>=1.22", "pyzmq>=24", "msgpack>=1.0", "onnxruntime>=1.16", "cryptography>=41", "pyyaml>=6"]
GROUND = ["torch>=2.1", "onnx>=1.15", "onnxscript>=0.1", "tifffile>=2023.1", "imagecodecs>=2023.1", "tqdm>=4.60",
          "pyyaml>=6", "matplotlib>=3.6"]
SIM = ["sgp4>=2.22", "matplotlib>=3.6"]
JETSON = ["tensorrt", "cuda-python", "jetson-stats"]  # pycuda instead of cuda-python on TX2 / JetPack 4
# CUDA 12.9 NVRTC + ptxas + headers: compile-check the kernels for sm_53/62/72 (TX2, Xavier), which CUDA 13 cannot
CUDA12_CHECK = ["nvidia-cuda-nvrtc-cu12==12.9.*", "nvidia-cuda-nvcc-cu12==12.9.*", "nvidia-cuda-runtime-cu12==12.9.*"]
DEV = ONBOARD + GROUND + SIM + CUDA12_CHECK + ["pytest>=7", "hypothesis>=6", "skyfield>=1.45"]  # skyfield: test oracle

setup(
    name="satedge",
    version="0.1.0",
    description="Onboard satellite edge-computing runtime: ground training and compression, "
    "signed engine bundles, an onboard daemon over ZeroMQ, and a constellation simulator.",
    python_requires=">=3.8",
    packages=find_packages(include=["engines", "engines.*", "onboard", "onboard.*", "ground", "ground.*",
                                    "sim", "sim.*"]),
    py_modules=["satedge_cli"],
    package_data={"engines": ["profiles/*.json"], "sim": ["scenarios/*.yaml"], "ground": ["recipes/*.yaml"]},
    install_requires=["numpy>=1.22", "msgpack>=1.0", "pyzmq>=24"],
    extras_require={"onboard": ONBOARD, "ground": GROUND, "sim": SIM, "jetson": JETSON, "dev": DEV},
    entry_points={"console_scripts": ["satedge=satedge_cli:main"]},
)
