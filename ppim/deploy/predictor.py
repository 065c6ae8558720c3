"""The Paddle Inference predictor over an exported directory (CPU oneDNN fp32/bf16, GPU, TensorRT).

    predictor = Predictor("out/lvvit_s", precision="bf16")
    logits = predictor(batch)                    # float32 (B, 3, S, S) -> (B, classes)
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import paddle

from ..runtime import cpu_count, machine, require
from ..transforms import create_transforms
from .common import INPUT_NAME, native_stdout_silenced
from .exporting import (DamagedExportError, check_requirements, int8_file, load_manifest, params_file, program_file,
                        verify_export)
from .paddle_int8 import INT8_OPS
from .registry import DEVICES, PRECISIONS, check_choice, check_supported

__all__ = ["ExportPredictor", "Predictor"]


def _call_first(obj: Any, names: Sequence[str], *args: Any) -> None:
    """Call the first of ``names`` that ``obj`` has (Paddle renamed mkldnn -> onednn in 3.x)."""
    for name in names:
        method = getattr(obj, name, None)
        if method is not None:
            method(*args)
            return
    raise RuntimeError(f"this Paddle {paddle.__version__} has none of Config.{'/'.join(names)}")


class ExportPredictor:
    """What every predictor over an export directory shares: the manifest, the input shape and its
    check, the model's cfg and eval transforms. Subclasses set up their engine and define
    ``__call__(batch)``: float32 numpy (B, 3, S, S) -> float32 numpy logits (B, classes).

    An export whose files are not what was exported (see verify_export) is refused
    (DamagedExportError), and so is one that needs a capability this machine lacks (CapabilityError:
    e.g. the fused attention kernel of an export made on an AVX-512 machine)."""

    def __init__(self, model_dir: Union[str, os.PathLike]):
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        if self.manifest:
            problem = verify_export(self.model_dir)
            if problem:
                raise DamagedExportError(problem)
            check_requirements(self.model_dir, self.manifest)
        shape = self.manifest.get("input_shape") or [-1, 3, -1, -1]
        self.input_shape = tuple(int(v) for v in shape)

    @property
    def cfg(self) -> Dict[str, Any]:
        """The model's cfg (transforms, classes) recorded at export."""
        return self.manifest.get("cfg", {})

    @property
    def transforms(self):
        """The eval transforms of the exported model: PIL image or path -> (3, S, S) float32 paddle.Tensor
        (``.to_numpy(image)``: the numpy array)."""
        if not self.cfg:
            raise ValueError(f"{self.model_dir} has no ppim.json cfg: build transforms with ppim.create_transforms")
        return create_transforms(self.cfg)

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = self.input_shape
        if batch.ndim != len(expected) or any(e > 0 and e != a for e, a in zip(expected, batch.shape)):
            want = "x".join("B" if e < 0 else str(e) for e in expected)
            raise ValueError(f"{self.manifest.get('model', 'the model')} takes float32 batches {want}, "
                             f"got shape {tuple(batch.shape)}")
        return batch


class Predictor(ExportPredictor):
    """A Paddle Inference predictor over an exported directory.

    ``Predictor(model_dir, device='cpu', precision='fp32', threads=None, tensorrt=False)``;
    ``predictor(batch)``: float32 (B, 3, S, S) numpy -> logits (B, classes) numpy.

    CPU: oneDNN with its fusion passes, ``threads`` math-library threads (default: the CPUs this
    process may use); ``bf16`` runs oneDNN bfloat16 kernels and needs a CPU with avx512_bf16 or
    amx_bf16; ``int8`` runs the int8 form of an export made with precision='int8' (see
    ppim.deploy.paddle_int8) by oneDNN's int8 kernels (a CPU with avx2). What this machine
    cannot run raises CapabilityError (ppim.deploy.registry). GPU (a CUDA build of Paddle):
    ``fp16``/``bf16`` by Paddle's mixed-precision pass, or by TensorRT with ``tensorrt=True`` (dynamic batch 1..max_batch_size). The input and output handles
    are created once and reused; calls are serialised by a lock (use one Predictor per thread for
    parallelism)."""

    def __init__(self, model_dir: Union[str, os.PathLike], device: str = "cpu", precision: str = "fp32",
                 threads: Optional[int] = None, tensorrt: bool = False, max_batch_size: Optional[int] = None,
                 device_id: int = 0, memory_optim: bool = True):
        super().__init__(model_dir)
        self.device = check_choice("device", device, DEVICES)
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.tensorrt = bool(tensorrt)
        if self.device == "cpu" and self.tensorrt:
            raise ValueError("tensorrt=True needs device='gpu' (TensorRT runs on NVIDIA GPUs only)")
        check_supported("inference", self.precision, self.device)
        if self.precision == "int8":  # the int8 program beside the float one (ppim.deploy.paddle_int8)
            program = int8_file(self.model_dir, self.manifest, "inference")
            params = int8_file(self.model_dir, self.manifest, "inference", key="params")
        else:
            program, params = program_file(self.model_dir), params_file(self.model_dir)
        shape = self.input_shape
        self.max_batch_size = int(max_batch_size or (shape[0] if shape[0] > 0 else 64))
        self.threads = None
        self._tmp = None
        if self.device == "cpu":
            self.threads = int(threads or cpu_count())
            config = self._cpu_config(program, params)
        else:
            if self.manifest.get("deploy_attention") == "fused":
                raise ValueError(f"{self.model_dir} holds the fused CPU attention (an fp32 CPU export): export "
                                 f"with device='gpu' for GPUs")
            config = self._gpu_config(program, params, device_id)
        if memory_optim and program.suffix != ".json":
            # (Paddle 3.x PIR programs get their buffer reuse from the inplace pass; their predictor
            # fails on memory_optimize_pass.)
            config.enable_memory_optim()
        config.switch_ir_optim(True)
        config.disable_glog_info()
        self.config = config
        with native_stdout_silenced(stderr=self.precision == "int8"):
            self.predictor = paddle.inference.create_predictor(config)
        self.input_names = list(self.predictor.get_input_names())
        self.output_names = list(self.predictor.get_output_names())
        self._input = self.predictor.get_input_handle(self.input_names[0])
        self._output = self.predictor.get_output_handle(self.output_names[0])
        self._lock = threading.Lock()
        self._warm = False

    # -- configuration -------------------------------------------------------------------------
    def _cpu_config(self, program: Path, params: Path):
        config = paddle.inference.Config(str(program), str(params))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(self.threads)
        if not machine().onednn:  # (bf16 and int8 need oneDNN: refused by check_supported)
            return config
        if self.precision == "int8":  # Paddle 3.x: PIR's oneDNN passes have no int8, the legacy IR's do
            _call_first(config, ("enable_new_ir",), False)
        _call_first(config, ("enable_onednn", "enable_mkldnn"))
        if self.precision == "int8":
            _call_first(config, ("enable_onednn_int8", "enable_mkldnn_int8"), set(INT8_OPS))
        if self.precision == "bf16":
            _call_first(config, ("enable_onednn_bfloat16", "enable_mkldnn_bfloat16"))
        return config

    def _gpu_config(self, program: Path, params: Path, device_id: int):
        infer = paddle.inference
        mode = {"fp32": infer.PrecisionType.Float32, "fp16": infer.PrecisionType.Half,
                "bf16": infer.PrecisionType.Bfloat16}[self.precision]
        size = self.input_shape[2] if len(self.input_shape) == 4 and self.input_shape[2] > 0 else None
        if not self.tensorrt:
            config = infer.Config(str(program), str(params))
            config.enable_use_gpu(256, device_id, mode)
            return config
        require("tensorrt", "tensorrt=True")
        if self.precision == "bf16":
            raise ValueError("TensorRT here runs fp32 or fp16; use precision='fp16' or tensorrt=False for bf16")
        if size is None:
            raise ValueError("TensorRT needs the input size: export with ppim.deploy.export (ppim.json)")
        lo, opt, hi = [1, 3, size, size], [min(16, self.max_batch_size), 3, size, size], \
            [self.max_batch_size, 3, size, size]
        if program.suffix == ".json":
            # Paddle 3.x PIR programs: the TensorRT subgraphs are converted ahead of time
            # (paddle.tensorrt.convert) into a new program the GPU predictor then runs.
            import paddle.tensorrt as paddle_trt
            from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig

            self._tmp = tempfile.TemporaryDirectory(prefix="ppim-trt-")
            trt_prefix = os.path.join(self._tmp.name, "model")
            trt_input = Input(min_input_shape=tuple(lo), optim_input_shape=tuple(opt), max_input_shape=tuple(hi),
                              name=self.manifest.get("input_name", INPUT_NAME))
            trt_config = TensorRTConfig(inputs=[trt_input])
            trt_config.precision_mode = PrecisionMode.FP16 if self.precision == "fp16" else PrecisionMode.FP32
            trt_config.save_model_dir = trt_prefix
            dynamic = paddle.in_dynamic_mode()
            paddle.enable_static()  # convert loads the program with static-only APIs
            try:
                paddle_trt.convert(str(program.with_suffix("")), trt_config)
            finally:
                if dynamic:
                    paddle.disable_static()
            config = infer.Config(trt_prefix + ".json", trt_prefix + ".pdiparams")
            config.enable_use_gpu(256, device_id)
            return config
        # Legacy programs (Paddle 2.x): TensorRT subgraph engine with a dynamic batch profile.
        config = infer.Config(str(program), str(params))
        config.enable_use_gpu(256, device_id)
        config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=self.max_batch_size,
                                      min_subgraph_size=3, precision_mode=mode, use_static=False,
                                      use_calib_mode=False)
        name = self.manifest.get("input_name", INPUT_NAME)
        config.set_trt_dynamic_shape_info({name: lo}, {name: hi}, {name: opt})
        return config

    # -- running -------------------------------------------------------------------------------
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        with self._lock:
            self._input.reshape(list(batch.shape))
            self._input.copy_from_cpu(batch)
            if self._warm:
                self.predictor.run()
            else:  # the first run builds the kernels, and Paddle prints as it does
                with native_stdout_silenced():
                    self.predictor.run()
                self._warm = True
            return self._output.copy_to_cpu()

    def clone(self) -> "Predictor":
        """Another predictor sharing the weights (one per thread)."""
        other = object.__new__(Predictor)
        other.__dict__.update(self.__dict__)
        other.predictor = self.predictor.clone()
        other._input = other.predictor.get_input_handle(self.input_names[0])
        other._output = other.predictor.get_output_handle(self.output_names[0])
        other._lock = threading.Lock()
        other._warm = False
        return other

    def __repr__(self) -> str:
        extra = f", threads={self.threads}" if self.threads else ""
        trt = ", tensorrt=True" if self.tensorrt else ""
        return (f"Predictor({str(self.model_dir)!r}, device={self.device!r}, precision={self.precision!r}"
                f"{extra}{trt})")

