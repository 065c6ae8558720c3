"""ppim: PaddlePaddle image models (LV-ViT, SuperViT). PaddlePaddle itself is not a requirement
here because users pick the build: `pip install paddlepaddle` (CPU) or `paddlepaddle-gpu`."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def version() -> str:
    for line in (ROOT / "ppim" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("ppim/version.py has no __version__")


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
    },
    entry_points={
        "console_scripts": [
            "ppim-eval=ppim.cli.eval:main",
            "ppim-train=ppim.cli.train:main",
            "ppim-convert=ppim.cli.convert:main",
            "ppim-export=ppim.cli.export:main",
            "ppim-predict=ppim.cli.predict:main",
            "ppim-benchmark=ppim.cli.benchmark:main",
            "ppim-visualize=ppim.cli.visualize:main",
            "ppim-make-token-labels=ppim.cli.make_token_labels:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
