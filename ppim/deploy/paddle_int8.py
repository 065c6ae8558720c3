"""int8 in Paddle Inference on the CPU (oneDNN): quantize_paddle adds the int8 form of an export made
with precision='int8', engine='inference', which Predictor(model_dir, precision='int8') runs.

    export(model, "out/int8", precision="int8", engine="inference", calibration="photos/")

Post-training quantization (paddle.quantization.PTQ) with per-tensor abs-max scales on every Linear
and Conv2D (the fc GEMMs and the stem convs; per-channel weight scales break on square weights),
attention in its 'matmul' export layout (q, k, v as Linear layers), saved as a LEGACY program: on
Paddle 3.x only the legacy IR has oneDNN's int8 passes (the PIR pass list deletes the quantize and
dequantize ops and runs fp32). A legacy program must be traced in a process started with
FLAGS_enable_pir_api=0, so the quantization runs in a child process, handed the model as a ppim
checkpoint and the calibration images as a .npy.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..builder import describe_model
from ..errors import CapabilityError
from ..subnet import current_subnet
from ..weights import save_pdparams
from ..weights.containers import MODEL_DESCRIPTION_KEY
from .exporting import add_file, load_manifest, record
from .quantize import Calibration

__all__ = ["INT8_PROGRAM", "INT8_PARAMS", "INT8_OPS", "quantize_paddle"]

INT8_PROGRAM, INT8_PARAMS = "model_int8.pdmodel", "model_int8.pdiparams"
#: The op types oneDNN runs in int8 (its default, every op it can, also quantizes ops left in float).
INT8_OPS = frozenset({"fc", "conv2d", "fused_conv2d"})
#: Seconds the child process may take (lvvit_s with 300 calibration images at 224: about 3 minutes
#: on 2 cores).
QUANTIZE_TIMEOUT = 1800
_METHOD = "paddle PTQ, per-tensor abs-max (Linear, Conv2D), legacy program"


def quantize_paddle(model: Any, model_dir: Path, calibration: Calibration) -> Path:
    """Add Paddle Inference's int8 form of ``model`` to the export in ``model_dir``
    (model_int8.pdmodel/.pdiparams, calibrated on ``calibration``'s images), recorded in the
    manifest's ``int8`` entry. RuntimeError naming the cause when the child process fails or
    overruns QUANTIZE_TIMEOUT; CapabilityError for a SuperViT sub-network."""
    if current_subnet(model) is not None:
        raise CapabilityError("Paddle Inference int8 quantizes plain models, not SuperViT sub-networks: use "
                              "engine='openvino' for int8 sub-networks")
    size = int(load_manifest(model_dir)["input_shape"][-1])  # the export's input size
    with tempfile.TemporaryDirectory(prefix="ppim-int8-") as tmp:
        work = Path(tmp)
        state = {name: value.numpy() for name, value in model.state_dict().items()}
        save_pdparams({**state, MODEL_DESCRIPTION_KEY: describe_model(model)}, work / "model.pdparams")
        np.save(work / "calibration.npy", calibration.images)
        _run_child(work, size)
        for name, made in ((INT8_PARAMS, "int8.pdiparams"), (INT8_PROGRAM, "int8.pdmodel")):
            add_file(model_dir, name, (work / made).read_bytes())
    record(model_dir, "int8", {"engine": "inference", "file": INT8_PROGRAM, "params": INT8_PARAMS,
                               "method": _METHOD, "calibration": calibration.describe()})
    return model_dir / INT8_PROGRAM


def _run_child(work: Path, size: int) -> None:
    root = str(Path(__file__).resolve().parents[2])  # the ppim the parent runs, found first
    env = {**os.environ, "FLAGS_enable_pir_api": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    code = f"from ppim.deploy.paddle_int8 import _quantize_in_child; _quantize_in_child({str(work)!r}, {size})"
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=QUANTIZE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Paddle Inference int8 quantization took over {QUANTIZE_TIMEOUT} s and was stopped: "
                           f"calibrate on fewer images, or use engine='openvino'") from None
    if proc.returncode != 0 or not (work / "int8.pdmodel").is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"Paddle Inference int8 quantization failed (exit {proc.returncode}):\n{tail}")


# ------------------------------------------------------------------------------------------------
# the child process (FLAGS_enable_pir_api=0)
# ------------------------------------------------------------------------------------------------
def _legacy_functions() -> None:
    """Paddle 3.x binds paddle.matmul and F.gelu to PIR ops only ("must be Value, but got Variable"
    when tracing a legacy program): give them legacy-program versions. Dygraph calls go to the
    originals."""
    import paddle
    from paddle.base.layer_helper import LayerHelper

    matmul, gelu = paddle.matmul, paddle.nn.functional.gelu

    def legacy_matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        if paddle.in_dynamic_mode():
            return matmul(x, y, transpose_x, transpose_y)
        helper = LayerHelper("matmul_v2")
        out = helper.create_variable_for_type_inference(x.dtype)
        helper.append_op(type="matmul_v2", inputs={"X": x, "Y": y}, outputs={"Out": out},
                         attrs={"trans_x": transpose_x, "trans_y": transpose_y})
        return out

    def legacy_gelu(x, approximate=False, name=None):
        if paddle.in_dynamic_mode():
            return gelu(x, approximate)
        helper = LayerHelper("gelu")
        out = helper.create_variable_for_type_inference(x.dtype)
        helper.append_op(type="gelu", inputs={"X": x}, outputs={"Out": out}, attrs={"approximate": bool(approximate)})
        return out

    # not_to_static: dy2static's convert_call would otherwise recurse into the wrappers and dead-lock
    paddle.matmul = paddle.jit.not_to_static(legacy_matmul)
    paddle.nn.functional.gelu = paddle.jit.not_to_static(legacy_gelu)


def _int8_weights(prefix: str) -> int:
    """Store every weight that feeds a dequantize_linear as int8: PTQ.convert leaves float32 holding
    the integers, and oneDNN's quant_dequant pass reads them as int8_t (garbage logits otherwise).
    Returns how many."""
    import paddle

    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            program, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
            block = program.global_block()
            count = 0
            for op in block.ops:
                if op.type != "dequantize_linear" or not block.var(op.input("X")[0]).persistable:
                    continue
                name = op.input("X")[0]
                tensor = scope.find_var(name).get_tensor()
                data = np.array(tensor)
                if not (np.all(data == np.round(data)) and np.abs(data).max(initial=0) <= 128):
                    raise RuntimeError(f"quantized weight {name} does not hold int8 values")
                tensor.set(data.astype(np.int8), paddle.CPUPlace())
                block.var(name).desc.set_dtype(paddle.base.core.VarDesc.VarType.INT8)
                count += 1
            paddle.static.save_inference_model(prefix, [block.var(f) for f in feeds], fetches, exe, program=program)
        return count
    finally:
        paddle.disable_static()


def _quantize_in_child(work: str, size: int, batch: int = 8) -> None:
    """In the child: rebuild the model from ``work``/model.pdparams, calibrate on
    ``work``/calibration.npy and write ``work``/int8.pdmodel/.pdiparams."""
    if os.environ.get("FLAGS_enable_pir_api") != "0":
        raise RuntimeError("the int8 export must run in a process started with FLAGS_enable_pir_api=0")
    import paddle
    from paddle.quantization import PTQ, QuantConfig
    from paddle.quantization.observers import AbsmaxObserver

    import ppim
    from .common import INPUT_NAME
    from .exporting import _deploy_layout

    if int(paddle.__version__.split(".")[0]) >= 3:
        _legacy_functions()
    model = ppim.create_model(checkpoint_path=os.path.join(work, "model.pdparams"))
    model.eval()
    images = np.load(os.path.join(work, "calibration.npy"))
    spec = [paddle.static.InputSpec([None, 3, size, size], "float32", name=INPUT_NAME)]
    with _deploy_layout(model, "matmul"):
        config = QuantConfig(activation=None, weight=None)
        config.add_type_config([paddle.nn.Linear, paddle.nn.Conv2D], activation=AbsmaxObserver(),
                               weight=AbsmaxObserver())
        ptq = PTQ(config)
        observed = ptq.quantize(model, inplace=False)
        with paddle.no_grad():
            for start in range(0, len(images), batch):
                observed(paddle.to_tensor(images[start:start + batch]))
        paddle.jit.save(ptq.convert(observed, inplace=False), os.path.join(work, "int8"), input_spec=spec)
    if not _int8_weights(os.path.join(work, "int8")):
        raise RuntimeError("the quantized program has no int8 weights")

