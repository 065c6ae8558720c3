"""ppim: PaddlePaddle image models (LV-ViT, SuperViT). PaddlePaddle itself is not a requirement
here because users pick the build: `pip install paddlepaddle` (CPU) or `paddlepaddle-gpu`."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def version() -> str:
    for line in (ROOT / "ppim" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("ppim/__init__.py has no __version__")


setup(
    name="ppim",
    version=version(),
    description="PaddlePaddle image models: LV-ViT and SuperViT with pretrained weights",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["ppim", "ppim.*"]),
    package_data={"ppim": ["assets/*.txt", "assets/*.md", "assets/sample/*", "assets/sample/*/*"]},
    install_requires=["numpy", "pillow", "tqdm", "requests"],
    extras_require={
        # torch only writes reference checkpoints and models in the tests; ppim never imports it.
        "test": ["pytest", "pytest-timeout", "torch==2.13.0", "nbclient", "nbformat", "ipykernel"],
        # Optional engines over ppim's export (ppim.deploy.engines), converted by paddle2onnx.
        "openvino": ["openvino", "paddle2onnx"],
        "onnxruntime": ["onnxruntime", "paddle2onnx"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
