"""ppim: PaddlePaddle image models (LV-ViT, SuperViT). PaddlePaddle itself is not a requirement
here because users pick the build: `pip install paddlepaddle` (CPU) or `paddlepaddle-gpu`."""
import ast
import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def _constant(path: str, name: str) -> str:
    """A top-level string constant of a ppim module, read as text (setup.py cannot import ppim)."""
    for line in (ROOT / path).read_text().splitlines():
        if line.startswith(f"{name} ="):
            return ast.literal_eval(line.split("=", 1)[1].strip())
    raise RuntimeError(f"{path} has no {name}")


# Paddle 2.6 crashes in zlib unless libz is loaded before libpaddle.so: an installed ppim loads it
# when the interpreter starts, through a one-line .pth (the reasons are in ppim/_zlib.py).
STARTUP_PTH = (_constant("ppim/_zlib.py", "STARTUP_PTH"), _constant("ppim/_zlib.py", "STARTUP_LINE") + "\n")


class BuildPyWithStartup(build_py):
    """build_py that also puts STARTUP_PTH at the top of site-packages (wheel installs)."""

    def run(self):
        super().run()
        os.makedirs(self.build_lib, exist_ok=True)
        with open(os.path.join(self.build_lib, STARTUP_PTH[0]), "w") as f:
            f.write(STARTUP_PTH[1])

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, STARTUP_PTH[0])]


try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: pip install -e goes through setup.py develop, no startup line
    editable_wheel = None


class EditableWheelWithStartup(editable_wheel or object):
    """pip install -e: the editable wheel carries STARTUP_PTH too (its strategies keep only packages)."""

    def _select_strategy(self, *args, **kwargs):
        return _AddStartupPth(super()._select_strategy(*args, **kwargs))


class _AddStartupPth:
    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(*STARTUP_PTH)

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)


setup(
    name="ppim",
    version=_constant("ppim/version.py", "__version__"),
    description="PaddlePaddle image models: LV-ViT and SuperViT with pretrained weights",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["ppim", "ppim.*"]),
    package_data={"ppim": ["assets/*.txt", "assets/*.md", "assets/sample/*", "assets/sample/*/*"]},
    install_requires=["numpy", "pillow", "tqdm", "requests"],
    extras_require={
        # training records: curves.png (matplotlib) and --visualdl logs; training itself needs neither.
        "train": ["matplotlib", "visualdl"],
        # torch only writes reference checkpoints and models in the tests; ppim never imports it.
        "test": ["pytest", "pytest-timeout", "torch==2.13.0", "nbclient", "nbformat", "ipykernel", "matplotlib"],
        "plot": ["matplotlib"],  # ppim.visualize / ppim-visualize
        # Optional engines over ppim's export (ppim.deploy.engines), converted by paddle2onnx.
        "openvino": ["openvino", "paddle2onnx", "nncf"],  # nncf: int8 (post-training quantization)
        "onnxruntime": ["onnxruntime", "paddle2onnx"],
    },
    cmdclass={"build_py": BuildPyWithStartup,
              **({"editable_wheel": EditableWheelWithStartup} if editable_wheel else {})},
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
            "ppim-env=ppim.cli.env:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
