"""OpenVINO and ONNX Runtime over ppim's export, behind the same predictor contract as Paddle
Inference (float32 numpy (B, 3, S, S) -> float32 numpy logits (B, classes)), as FastDeploy does for
Paddle models. Both read ``model.onnx``, converted once from the Paddle export by paddle2onnx and
kept in the export directory. Optional extras: ``pip install 'ppim[openvino]'`` /
``'ppim[onnxruntime]'``. OpenVINO also runs int8: quantize_openvino (NNCF's post-training
quantization) adds the int8 form to an export made with precision='int8'.

    predictor = OpenVINOPredictor(cached_export(model), precision="bf16")
"""
from __future__ import annotations

import importlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import paddle

from ..runtime import cpu_count
from ..errors import MissingExtraError
from .common import native_stdout_silenced
from .exporting import add_file, export_file, int8_file, load_manifest, params_file, program_file, record
from .quantize import Calibration
from .predictor import ExportPredictor
from .registry import check_choice, check_supported

__all__ = ["ONNX_FILE", "onnx_file", "OpenVINOPredictor", "OnnxRuntimePredictor", "quantize_openvino"]

ONNX_FILE = "model.onnx"
OPENVINO_INT8_FILE = "model_int8.xml"  # OpenVINO IR; its weights beside it in model_int8.bin
ONNX_OPSET = 17


def _require(module: str, engine: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"engine={engine!r} needs the {module} package, which is not installed: "
                                f"pip install 'ppim[{engine}]'") from exc


def onnx_file(model_dir: Union[str, os.PathLike], engine: str = "onnxruntime") -> Path:
    """``model_dir/model.onnx``: the Paddle export converted by paddle2onnx (opset 17) the first time
    it is asked for, then added to the export's files."""
    model_dir = Path(model_dir)
    path = model_dir / ONNX_FILE
    if path.is_file() or path.is_symlink():
        return export_file(model_dir, ONNX_FILE)
    if load_manifest(model_dir).get("deploy_attention") == "fused":
        raise ValueError(f"{model_dir} holds Paddle Inference's fused CPU attention, which ONNX has not: export "
                         f"with engine={engine!r} (ppim.deploy.export(..., engine={engine!r}))")
    p2o = _require("paddle2onnx", engine)
    program = program_file(model_dir)
    params = params_file(model_dir)
    # Its own constant folding (polygraphy) would pip-install onnx_graphsurgeon from NVIDIA's index:
    # off; ONNX Runtime and OpenVINO fold constants themselves.
    quiet = logging.getLogger("paddle2onnx")
    with native_stdout_silenced():
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            data = p2o.export(str(program), str(params), save_file=None, opset_version=ONNX_OPSET,
                              enable_onnx_checker=True, optimize_tool="None")
        except Exception as exc:  # noqa: BLE001 - paddle2onnx raises anything
            raise RuntimeError(f"paddle2onnx could not convert {program}: {exc}") from exc
        finally:
            quiet.setLevel(level)
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RuntimeError(f"paddle2onnx could not convert {program} (Paddle {paddle.__version__}); "
                           f"use engine='inference'")
    return add_file(model_dir, ONNX_FILE, bytes(data))


def quantize_openvino(model: Any, model_dir: Path, calibration: Calibration) -> Path:
    """Add OpenVINO's int8 form of the export in ``model_dir`` (its ONNX form through NNCF's
    post-training quantization, calibrated on ``calibration``'s images) as model_int8.xml/.bin,
    recorded in the manifest's ``int8`` entry (``model`` unused: NNCF quantizes the export).
    NNCF's transformer setting: the GEMMs (fc, attention matmuls) in int8 with per-channel
    symmetric weights and asymmetric activations (the MIXED preset), SmoothQuant, bias correction;
    softmax, LayerNorm and GELU stay in float."""
    ov = _require("openvino", "openvino")
    nncf = _require("nncf", "openvino")
    network = ov.Core().read_model(str(onnx_file(model_dir, "openvino")))
    images = calibration.images
    with native_stdout_silenced():  # NNCF draws progress bars
        quantized = nncf.quantize(network, nncf.Dataset([images[i:i + 1] for i in range(len(images))]),
                                  preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(images))
    with tempfile.TemporaryDirectory(prefix="ppim-int8-") as tmp:
        xml = Path(tmp) / OPENVINO_INT8_FILE
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        for path in (xml.with_suffix(".bin"), xml):  # the weights first: the IR names them
            add_file(model_dir, path.name, path.read_bytes())
    record(model_dir, "int8", {"engine": "openvino", "file": OPENVINO_INT8_FILE, "method": f"nncf {nncf.__version__}",
                               "calibration": calibration.describe()})
    return model_dir / OPENVINO_INT8_FILE


class OpenVINOPredictor(ExportPredictor):
    """OpenVINO's CPU plugin over the ONNX form of an export.

    ``precision``: 'fp32' (INFERENCE_PRECISION_HINT f32: on CPUs with bfloat16 OpenVINO would
    otherwise run bf16 silently), 'bf16' (needs avx512_bf16/amx_bf16) or 'int8' (the export's int8
    form, see quantize_openvino; what stays in float runs in f32). ``hint``: OpenVINO's
    PERFORMANCE_HINT: 'LATENCY' (one request uses every thread), 'THROUGHPUT' (the batch split
    over OpenVINO's optimal number of parallel infer requests, each on its share of the threads,
    run asynchronously) or 'AUTO' (the default: LATENCY for batch 1, THROUGHPUT for larger
    batches, which measured fastest for each: docs/performance.md). One compiled model per batch
    size, static shapes, compiled at the first call with that size."""

    def __init__(self, model_dir: Union[str, os.PathLike], precision: str = "fp32", threads: Optional[int] = None,
                 device: str = "cpu", hint: str = "AUTO"):
        super().__init__(model_dir)
        check_supported("openvino", precision, device)
        self.device, self.precision = device, precision
        self.threads = int(threads or cpu_count())
        self.hint = check_choice("hint", hint.upper(), ("AUTO", "LATENCY", "THROUGHPUT"))
        ov = _require("openvino", "openvino")
        self._core = ov.Core()
        source = (int8_file(self.model_dir, self.manifest, "openvino") if precision == "int8"
                  else onnx_file(self.model_dir, "openvino"))
        self._model = self._core.read_model(str(source))
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                        "INFERENCE_NUM_THREADS": self.threads}
        self._requests: Dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def _compile(self, shape: Sequence[int], hint: str) -> Any:
        model = self._model.clone()
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        return self._core.compile_model(model, "CPU", {**self._config, "PERFORMANCE_HINT": hint})

    def compiled(self, shape: tuple) -> List[Any]:
        """The infer requests for inputs of ``shape`` (cached): one LATENCY request, or THROUGHPUT
        requests each taking an equal part of the batch."""
        if shape not in self._requests:
            batch = shape[0]
            hint = self.hint if self.hint != "AUTO" else ("LATENCY" if batch == 1 else "THROUGHPUT")
            parts = 1
            if hint == "THROUGHPUT" and batch > 1:
                probe = self._compile(shape, hint)
                parts = max(1, min(batch, int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))
                while batch % parts:
                    parts -= 1
                net = probe if parts == 1 else self._compile((batch // parts, *shape[1:]), hint)
            else:
                net = self._compile(shape, hint)
            self._requests[shape] = [net.create_infer_request() for _ in range(parts)]
        return self._requests[shape]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        with self._lock:
            requests = self.compiled(batch.shape)
            if len(requests) == 1:
                requests[0].infer([batch])
            else:
                for request, part in zip(requests, np.split(batch, len(requests))):
                    request.start_async([part])
                for request in requests:
                    request.wait()
            return np.concatenate([np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
                                   for request in requests])

    def __repr__(self) -> str:
        return f"OpenVINOPredictor({str(self.model_dir)!r}, precision={self.precision!r}, threads={self.threads})"


class OnnxRuntimePredictor(ExportPredictor):
    """ONNX Runtime's CPU execution provider over the ONNX form of an export: all graph
    optimisations, ``threads`` intra-op threads; fp32 only (its CPU provider has no bf16 kernels
    for these models)."""

    def __init__(self, model_dir: Union[str, os.PathLike], precision: str = "fp32", threads: Optional[int] = None,
                 device: str = "cpu"):
        super().__init__(model_dir)
        check_supported("onnxruntime", precision, device)
        self.device, self.precision = device, precision
        self.threads = int(threads or cpu_count())
        ort = _require("onnxruntime", "onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_file(self.model_dir, "onnxruntime")), options,
                                             providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        return np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxRuntimePredictor({str(self.model_dir)!r}, threads={self.threads})"
