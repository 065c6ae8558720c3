"""Running models: top-k classification, export for Paddle Inference, the Paddle Inference
predictor, one runner interface over both engines, and the throughput benchmark.

    export(model, "out/lvvit_s")                 # out/lvvit_s/{model.json|model.pdmodel, model.pdiparams, ppim.json}
    predictor = Predictor("out/lvvit_s", precision="bf16")
    logits = predictor(batch)                    # float32 (B, 3, S, S) -> (B, classes)
    run = create_runner(model, engine="inference")   # the same, export included
    rows = benchmark("lvvit_s", batch_sizes=(16,))

Paddle 2.6 writes the legacy program (model.pdmodel), Paddle 3.x a PIR program (model.json); both are
found and loaded the same way.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .data import imagenet_class_names
from .models.supervit import is_supernet
from .fileio import write_json
from .registry import create_model, model_name
from .transforms import ImageLike, create_transforms

__all__ = ["classify", "export", "load_manifest", "Predictor", "Runner", "create_runner", "benchmark",
           "format_rows", "CeilingProbe", "measure_ceiling", "cpu_supports_bf16", "ENGINES", "PRECISIONS"]

Prediction = List[Tuple[int, str, float]]

ENGINES = ("eager", "inference")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "gpu")
MANIFEST = "ppim.json"
INPUT_NAME = "x"
PROGRAM_FILES = ("model.json", "model.pdmodel")  # Paddle 3.x PIR program, legacy (Paddle 2.x) program
PARAMS_FILE = "model.pdiparams"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


# ------------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------------
def classify(model: paddle.nn.Layer, images: Sequence[ImageLike], transforms: Callable = None,
             topk: int = 5, batch_size: int = 16, engine: str = "eager", precision: str = "fp32",
             runner: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> List[Prediction]:
    """Top-k (class id, class name, probability) per image, probabilities from a softmax over the
    model's eval logits. ``transforms`` defaults to the model's own eval transforms. ``engine`` /
    ``precision`` pick the runner (see create_runner); an existing ``runner`` may be passed instead."""
    transforms = transforms or create_transforms(model.pretrained_cfg)
    names = imagenet_class_names()
    if runner is None:
        runner = create_runner(model, engine=engine, precision=precision)
    results: List[Prediction] = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([transforms(image) for image in images[start:start + batch_size]])
        probs = _softmax(runner(batch.astype("float32")))
        for row in probs:
            top = np.argsort(-row)[:topk]
            results.append([(int(i), names[i] if len(row) == len(names) else str(i), float(row[i]))
                            for i in top])
    return results


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype("float64")
    logits = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return logits / logits.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _current_subnet(model: nn.Layer) -> Optional[Tuple[int, float]]:
    if not is_supernet(model):
        return None
    return int(model.img_size), float(model.keep_ratio)


def _input_size(model: nn.Layer, img_size: Optional[int]) -> int:
    """The side S of the exported input (B, 3, S, S)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    native = int(cfg["input_size"][-1]) if "input_size" in cfg else None
    if is_supernet(model):
        # Super models take the 224 crop of their transforms and resize it to the sub-network's size
        # inside the graph; another S feeds images of that size (resized likewise).
        return int(img_size or native or max(model.img_sizes))
    if native is None:
        native = getattr(model, "img_size", None)
    if img_size is None:
        if native is None:
            raise ValueError(f"{model_name(model)} has no pretrained_cfg input size: pass img_size")
        return int(native)
    if native is not None and int(img_size) != int(native):
        name = model_name(model)
        raise ValueError(f"{name} is built for {native}x{native} inputs, not {img_size}x{img_size}: build it "
                         f"for that size (ppim.create_model({name!r}, img_size={img_size})) and export that model")
    return int(img_size)


class _DeployAttention(nn.Layer):
    """Attention, numerically ``layers.Attention`` in eval mode, laid out for Paddle Inference's oneDNN
    passes: q, k and v are three Linear layers (the columns of qkv; the q scale folded into q's
    weights, exact for power-of-two scales; a zero bias when the model has none, so each is an fc
    GEMM), and each head split is reshape -> transpose -> matmul, and the merge matmul -> transpose
    -> reshape, which the passes fold into the matmuls' memory layouts. The transposes and slices
    of the packed qkv tensor, about 5% of lvvit_s's bf16 time, disappear. Export only; the model
    itself is never changed."""

    def __init__(self, attn: nn.Layer):
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        dim = self.num_heads * self.head_dim
        weight = attn.qkv.weight.numpy().astype("float32").copy()
        bias = (attn.qkv.bias.numpy().astype("float32").copy() if attn.qkv.bias is not None
                else np.zeros([3 * dim], dtype="float32"))
        weight[:, :dim] *= np.float32(attn.scale)
        bias[:dim] *= np.float32(attn.scale)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        for index, layer in enumerate((self.q, self.k, self.v)):
            layer.weight.set_value(np.ascontiguousarray(weight[:, index * dim:(index + 1) * dim]))
            layer.bias.set_value(np.ascontiguousarray(bias[index * dim:(index + 1) * dim]))
        self.proj = attn.proj

    def forward(self, x: paddle.Tensor, return_attention: bool = False):
        tokens, dim = x.shape[1], x.shape[2]
        heads = [-1, tokens, self.num_heads, self.head_dim]
        q = self.q(x).reshape(heads).transpose([0, 2, 1, 3])
        k = self.k(x).reshape(heads).transpose([0, 2, 1, 3])
        v = self.v(x).reshape(heads).transpose([0, 2, 1, 3])
        attn = F.softmax(paddle.matmul(q, k, transpose_y=True), axis=-1)
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, tokens, dim])
        out = self.proj(out)
        return (out, attn) if return_attention else out


def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of a 1-D bilinear resize with align_corners=True: row i mixes the two source
    pixels around i * (src - 1) / (dst - 1)."""
    matrix = np.zeros((dst, src), dtype=np.float64)
    ratio = (src - 1) / (dst - 1) if dst > 1 else 0.0
    for i in range(dst):
        pos = ratio * i
        lo = min(int(math.floor(pos)), src - 1)
        hi = min(lo + 1, src - 1)
        frac = pos - lo
        matrix[i, lo] += 1.0 - frac
        matrix[i, hi] += frac
    return matrix.astype("float32")


class _DeployResize(nn.Layer):
    """Wraps a super model for export: the bilinear (align_corners=True) resize of the input to the
    sub-network's size as two GEMMs with fixed interpolation matrices (R x R^T per channel), so the
    model sees its own size and skips F.interpolate, whose oneDNN kernel Paddle 3.x Inference cannot
    run (ArrayAttribute<DoubleAttribute> in onednn_instruction)."""

    def __init__(self, model: nn.Layer, src: int, dst: int):
        super().__init__()
        self.model = model
        matrix = _resize_matrix(src, dst)
        self.resize_rows = self.create_parameter(list(matrix.shape),
                                                 default_initializer=nn.initializer.Assign(matrix))
        self.resize_cols = self.create_parameter(list(matrix.T.shape),
                                                 default_initializer=nn.initializer.Assign(matrix.T.copy()))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model(paddle.matmul(paddle.matmul(self.resize_rows, x), self.resize_cols))


def _attention_layers(model: nn.Layer) -> List[Tuple[nn.Layer, str, nn.Layer]]:
    """(parent, attribute name, layer) of every ppim Attention in the model."""
    from .layers import Attention

    found = []
    for parent in [model] + list(model.sublayers()):
        for name, child in parent.named_children():
            if type(child) is Attention:
                found.append((parent, name, child))
    return found


@contextlib.contextmanager
def _deploy_layout(model: nn.Layer, enabled: bool = True):
    """Swap every Attention for its _DeployAttention while the block runs (export only)."""
    swapped = []
    try:
        if enabled:
            for parent, name, attn in _attention_layers(model):
                deploy = _DeployAttention(attn)
                deploy.eval()
                setattr(parent, name, deploy)
                swapped.append((parent, name, attn))
        yield bool(swapped)
    finally:
        for parent, name, attn in swapped:
            setattr(parent, name, attn)


@contextlib.contextmanager
def _preserve_forwards(model: nn.Layer):
    """Undo what tracing leaves on the layers: Paddle 2.x's convert_call replaces a called sublayer's
    ``forward`` by its converted function (an instance attribute), which breaks a later export of
    that layer on its own."""
    layers = [model] + list(model.sublayers())
    before = [(layer, layer.__dict__.get("forward", None), "forward" in layer.__dict__) for layer in layers]
    try:
        yield
    finally:
        for layer, forward, had in before:
            if had:
                layer.__dict__["forward"] = forward
            else:
                layer.__dict__.pop("forward", None)


def _program_file(model_dir: Path) -> Path:
    for name in PROGRAM_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir} holds no exported program ({' or '.join(PROGRAM_FILES)}); "
                            f"export one with ppim.inference.export or tools/export.py")


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory ``new`` to ``target``, replacing a previous export there."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _staged_dir(output_dir: Path) -> Iterator[Path]:
    """A temporary directory beside ``output_dir`` that replaces it when the block succeeds and is
    removed when it fails: readers see the old directory or the whole new one."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        yield tmp
        _replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(model: nn.Layer, output_dir: Union[str, os.PathLike], img_size: Optional[int] = None,
           batch_size: Optional[int] = None, optimize: bool = True) -> Path:
    """Save ``model`` (in eval mode) for Paddle Inference and return the directory.

    ``output_dir`` receives the program (``model.json`` on Paddle 3.x, ``model.pdmodel`` on 2.x),
    ``model.pdiparams`` and ``ppim.json`` (model name, transforms cfg, input shape, sub-network, Paddle
    version). The input is ``x``: float32 (batch_size or any, 3, S, S), S the model's input size;
    super models always take the 224 crop and have their current sub-network (``set_subnet``) baked
    in. ``optimize`` (default) exports an inference layout with the same numbers: attention as
    _DeployAttention (q, k, v as three fc GEMMs, the q scale folded in, head split and merge folded
    into the attention matmuls by the oneDNN passes) and, for a SuperViT sub-network smaller than
    its input, the bilinear resize as two GEMMs (_DeployResize; Paddle 3.x's oneDNN predictor cannot
    run F.interpolate). With ``optimize=False`` the model's own graph is saved as it is.

    The directory appears whole or not at all: everything is written to a temporary directory
    beside it, then renamed; a previous export there is replaced, any other non-empty directory is
    left alone (FileExistsError)."""
    output_dir = Path(output_dir).absolute()
    if output_dir.exists() and not (output_dir.is_dir() and (
            (output_dir / MANIFEST).is_file() or not any(output_dir.iterdir()))):
        raise FileExistsError(f"{output_dir} exists and is not a ppim export; choose another output directory")
    size = _input_size(model, img_size)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive int or None (any batch), got {batch_size!r}")
    was_training = model.training
    try:
        model.eval()
        with _staged_dir(output_dir) as tmp:
            spec = paddle.static.InputSpec([batch_size, 3, size, size], "float32", name=INPUT_NAME)
            subnet = _current_subnet(model)
            target = model
            if optimize and subnet is not None and subnet[0] != size:
                target = _DeployResize(model, size, subnet[0])
                target.eval()
            with _preserve_forwards(model), _deploy_layout(model, optimize) as deploy_attention:
                paddle.jit.save(target, str(tmp / "model"), input_spec=[spec])
            program = _program_file(tmp)
            if not (tmp / PARAMS_FILE).is_file():  # a model without parameters still gets a params file
                (tmp / PARAMS_FILE).write_bytes(b"")
            cfg = dict(getattr(model, "pretrained_cfg", None) or {})
            if cfg.get("crop") and int(cfg["crop"]) != size:
                from .registry import cfg_for_img_size

                cfg = cfg_for_img_size(cfg, size)
            from .version import __version__ as ppim_version

            manifest = {
                "format": "ppim-inference",
                "format_version": 1,
                "model": model_name(model),
                "input_name": INPUT_NAME,
                "input_shape": [batch_size or -1, 3, size, size],
                "input_dtype": "float32",
                "num_classes": int(getattr(model, "num_classes", cfg.get("num_classes", 0)) or 0),
                "subnet": None if subnet is None else {"img_size": subnet[0], "keep_ratio": subnet[1]},
                "cfg": cfg,
                "program_file": program.name,
                "params_file": PARAMS_FILE,
                "ir": "pir" if program.suffix == ".json" else "legacy",
                "optimized": bool(optimize),
                "deploy_attention": bool(deploy_attention),
                "paddle_version": paddle.__version__,
                "ppim_version": ppim_version,
            }
            write_json(tmp / MANIFEST, manifest)
    finally:
        if was_training:
            model.train()
    return output_dir


def load_manifest(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ppim.json of an export ({} for a directory exported by other tools)."""
    path = Path(model_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ------------------------------------------------------------------------------------------------
# Paddle Inference predictor
# ------------------------------------------------------------------------------------------------
def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    return bool(_cpu_flags() & set(BF16_CPU_FLAGS))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _onednn_compiled() -> bool:
    core = paddle.base.core if hasattr(paddle, "base") else paddle.fluid.core
    check = getattr(core, "is_compiled_with_onednn", None) or getattr(core, "is_compiled_with_mkldnn", None)
    return bool(check()) if check else False


def _check_gpu(what: str) -> None:
    if not paddle.is_compiled_with_cuda():
        raise RuntimeError(f"{what} needs a CUDA build of Paddle (pip install paddlepaddle-gpu); this Paddle "
                           f"{paddle.__version__} is a CPU-only build. Use device='cpu'.")
    if paddle.device.cuda.device_count() < 1:
        raise RuntimeError(f"{what}: Paddle is built with CUDA but sees no GPU (check CUDA_VISIBLE_DEVICES "
                           f"and the driver)")


def _tensorrt_version() -> Tuple[int, ...]:
    try:
        return tuple(paddle.inference.get_trt_compile_version())
    except Exception:  # noqa: BLE001 - absent on some builds
        return (0, 0, 0)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _native_stdout_silenced():
    """Hide what Paddle's C++ passes print to stdout while a predictor is built (Paddle 3.x prints
    "ReduceMeanCheckIfOneDNNSupport" for every mean op). Errors still raise; stderr is untouched."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):  # no real fd 1 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go to /dev/null, not to the restored fd
        os.dup2(saved, 1)
        os.close(saved)


def _call_first(obj: Any, names: Sequence[str], *args: Any) -> None:
    """Call the first of ``names`` that ``obj`` has (Paddle renamed mkldnn -> onednn in 3.x)."""
    for name in names:
        method = getattr(obj, name, None)
        if method is not None:
            method(*args)
            return
    raise RuntimeError(f"this Paddle {paddle.__version__} has none of Config.{'/'.join(names)}")


class Predictor:
    """A Paddle Inference predictor over an exported directory.

    ``Predictor(model_dir, device='cpu', precision='fp32', threads=None, tensorrt=False)``;
    ``predictor(batch)``: float32 (B, 3, S, S) numpy -> logits (B, classes) numpy.

    CPU: oneDNN with its fusion passes, ``threads`` math-library threads (default: the CPUs this
    process may use); ``bf16`` runs oneDNN bfloat16 kernels and needs a CPU with avx512_bf16 or
    amx_bf16. GPU (a CUDA build of Paddle): ``fp16``/``bf16`` by Paddle's mixed-precision pass, or by
    TensorRT with ``tensorrt=True`` (dynamic batch 1..max_batch_size). The input and output handles
    are created once and reused; calls are serialised by a lock (use one Predictor per thread for
    parallelism)."""

    def __init__(self, model_dir: Union[str, os.PathLike], device: str = "cpu", precision: str = "fp32",
                 threads: Optional[int] = None, tensorrt: bool = False, max_batch_size: Optional[int] = None,
                 device_id: int = 0, memory_optim: bool = True):
        self.model_dir = Path(model_dir)
        self.device = _check_choice("device", device, DEVICES)
        self.precision = _check_choice("precision", precision, PRECISIONS)
        self.tensorrt = bool(tensorrt)
        self.manifest = load_manifest(self.model_dir)
        program = _program_file(self.model_dir)
        params = self.model_dir / self.manifest.get("params_file", PARAMS_FILE)
        shape = self.manifest.get("input_shape") or [-1, 3, -1, -1]
        self.input_shape = tuple(int(v) for v in shape)
        self.max_batch_size = int(max_batch_size or (shape[0] if shape[0] > 0 else 64))
        self.threads = None
        self._tmp = None
        if self.device == "cpu":
            if self.tensorrt:
                raise ValueError("tensorrt=True needs device='gpu' (TensorRT runs on NVIDIA GPUs only)")
            if self.precision == "fp16":
                raise ValueError("precision='fp16' needs device='gpu'; on CPU use 'bf16' (oneDNN) or 'fp32'")
            self.threads = int(threads or _default_threads())
            config = self._cpu_config(program, params)
        else:
            config = self._gpu_config(program, params, device_id)
        if memory_optim and program.suffix != ".json":
            # (Paddle 3.x PIR programs get their buffer reuse from the inplace pass; their predictor
            # fails on memory_optimize_pass.)
            config.enable_memory_optim()
        config.switch_ir_optim(True)
        config.disable_glog_info()
        self.config = config
        with _native_stdout_silenced():
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
        if not _onednn_compiled():
            if self.precision == "bf16":
                raise RuntimeError(f"precision='bf16' on CPU needs oneDNN, and this Paddle {paddle.__version__} "
                                   f"is built without it")
            return config
        _call_first(config, ("enable_onednn", "enable_mkldnn"))
        if self.precision == "bf16":
            if not cpu_supports_bf16():
                raise RuntimeError(f"precision='bf16' on CPU needs native bfloat16 instructions: this CPU has "
                                   f"neither of the flags {' / '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo. "
                                   f"Use precision='fp32'.")
            _call_first(config, ("enable_onednn_bfloat16", "enable_mkldnn_bfloat16"))
        return config

    def _gpu_config(self, program: Path, params: Path, device_id: int):
        _check_gpu("device='gpu'")
        infer = paddle.inference
        mode = {"fp32": infer.PrecisionType.Float32, "fp16": infer.PrecisionType.Half,
                "bf16": infer.PrecisionType.Bfloat16}[self.precision]
        size = self.input_shape[2] if len(self.input_shape) == 4 and self.input_shape[2] > 0 else None
        if not self.tensorrt:
            config = infer.Config(str(program), str(params))
            config.enable_use_gpu(256, device_id, mode)
            return config
        if _tensorrt_version() == (0, 0, 0):
            raise RuntimeError(f"tensorrt=True: this Paddle {paddle.__version__} is built without TensorRT "
                               f"(paddle.inference.get_trt_compile_version() is 0.0.0)")
        if self.precision == "bf16":
            raise ValueError("TensorRT here runs fp32 or fp16; use precision='fp16' or tensorrt=False for bf16")
        if size is None:
            raise ValueError("TensorRT needs the input size: export with ppim.inference.export (ppim.json)")
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
    @property
    def cfg(self) -> Dict[str, Any]:
        """The model's cfg (transforms, classes) recorded at export."""
        return self.manifest.get("cfg", {})

    @property
    def transforms(self):
        """The eval transforms of the exported model (PIL image or path -> (3, S, S) float32)."""
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

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._check_batch(batch)
        with self._lock:
            self._input.reshape(list(batch.shape))
            self._input.copy_from_cpu(batch)
            if self._warm:
                self.predictor.run()
            else:  # the first run builds the kernels, and Paddle prints as it does
                with _native_stdout_silenced():
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


# ------------------------------------------------------------------------------------------------
# runners: one callable over both engines
# ------------------------------------------------------------------------------------------------
class Runner:
    """``runner(batch)``: float32 numpy (B, 3, S, S) -> float32 numpy logits (B, classes).
    Made by create_runner; ``engine``, ``precision``, ``device``, ``img_size`` (S), ``subnet``
    describe it, and ``predictor``/``model_dir`` the inference engine's predictor and export."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], engine: str, precision: str, device: str,
                 img_size: int, subnet: Optional[Tuple[int, float]] = None, threads: Optional[int] = None,
                 predictor: Optional[Predictor] = None, model_dir: Optional[Path] = None, keep: Any = None):
        self._fn = fn
        self.engine, self.precision, self.device = engine, precision, device
        self.img_size, self.subnet, self.threads = img_size, subnet, threads
        self.predictor, self.model_dir = predictor, model_dir
        self._keep = keep  # e.g. the temporary export directory, removed with the runner

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch)

    def __repr__(self) -> str:
        sub = f", subnet={self.subnet}" if self.subnet else ""
        return f"Runner(engine={self.engine!r}, precision={self.precision!r}, device={self.device!r}{sub})"


def _set_eager_threads(threads: Optional[int]) -> int:
    """Paddle's CPU math threads for eager mode (process-wide; Paddle starts with 1, from its
    OMP_NUM_THREADS default): ``threads``, by default every CPU this process may use."""
    threads = int(threads or _default_threads())
    core = paddle.base.core if hasattr(paddle, "base") else paddle.fluid.core
    core.set_num_threads(threads)
    return threads


def _eager_fn(model: nn.Layer, precision: str, device: str, threads: Optional[int]):
    if device == "gpu":
        _check_gpu("device='gpu'")
        place = paddle.CUDAPlace(0)
        model.to(device="gpu")
    else:
        place = paddle.CPUPlace()
        if precision != "fp32":
            raise ValueError(f"engine='eager' on CPU runs fp32 only (Paddle has no eager {precision} CPU "
                             f"kernels); use engine='inference' for {precision}")
        _set_eager_threads(threads)
    subnet = _current_subnet(model)
    kwargs = {} if subnet is None else {"img_size": subnet[0], "keep_ratio": subnet[1]}
    amp = None if precision == "fp32" else ("float16" if precision == "fp16" else "bfloat16")

    def run(batch: np.ndarray) -> np.ndarray:
        model.eval()
        with paddle.no_grad():
            x = paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32), place=place)
            if amp:
                with paddle.amp.auto_cast(level="O1", dtype=amp):
                    out = model(x, **kwargs)
            else:
                out = model(x, **kwargs)
            return out.astype("float32").numpy()

    return run


def create_runner(model: nn.Layer, engine: str = "eager", precision: str = "fp32", device: str = "cpu",
                  threads: Optional[int] = None, workdir: Optional[Union[str, os.PathLike]] = None
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """A callable mapping a float32 batch (B, 3, S, S) to logits (B, classes), numpy in and out.

    ``engine='eager'``: the model itself, eval mode, under paddle.no_grad: fp32 on CPU, with Paddle's
    process-wide CPU math threads set to ``threads`` (default all CPUs); fp16/bf16 by autocast on
    GPU. ``engine='inference'``: the model exported to ``workdir`` (a temporary directory, removed
    with the runner, when None) and run by a Predictor with ``precision``/``device``/``threads``.
    Super models run the sub-network current when the runner is made, in both engines."""
    _check_choice("engine", engine, ENGINES)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("device", device, DEVICES)
    size = _input_size(model, None)
    subnet = _current_subnet(model)
    if engine == "eager":
        fn = _eager_fn(model, precision, device, threads)
        return Runner(fn, engine, precision, device, size, subnet,
                      None if device == "gpu" else int(threads or _default_threads()))
    keep = None
    if workdir is None:
        keep = tempfile.TemporaryDirectory(prefix="ppim-export-")
        workdir = Path(keep.name) / "model"
    try:
        model_dir = export(model, workdir)
        predictor = Predictor(model_dir, device=device, precision=precision, threads=threads)
    except BaseException:
        if keep is not None:
            keep.cleanup()
        raise
    return Runner(predictor, engine, precision, device, size, subnet, predictor.threads, predictor, model_dir,
                  keep)


def _model_gmacs(model: nn.Layer, img_size: Optional[int] = None, keep_ratio: Optional[float] = None) -> float:
    """GMACs per image (ppim.flops); super models: of the sub-network (img_size, keep_ratio)."""
    from .flops import count_macs

    if is_supernet(model):
        return count_macs(model, img_size=img_size, keep_ratio=keep_ratio) / 1e9
    return count_macs(model) / 1e9


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------
class _MatMul(nn.Layer):
    """Two chained size x size Linear layers on x (size, size): the ceiling probe exported through the
    inference engine. Linear, so the oneDNN passes make each the same fc GEMM the models' Linear
    layers become (a bare matmul stays a slower matmul op on Paddle 2.6), and two of them because
    Paddle 2.6 keeps an fc fed straight from the input in fp32 under bf16."""

    def __init__(self, size: int):
        super().__init__()
        self.fc1 = nn.Linear(size, size)
        self.fc2 = nn.Linear(size, size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.fc1(x))


def _time_calls(fn: Callable[[], Any], iters: int, warmup: int) -> List[float]:
    for _ in range(max(1, warmup)):
        fn()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class CeilingProbe:
    """size^3 GEMMs through ``engine``, ready to be timed again and again (``probe.measure()`` ->
    GFLOP/s): paddle.matmul in eager mode for 'eager'; for 'inference' an exported model of two
    chained Linear layers run by a Predictor with the same configuration (device, precision,
    threads). The machine's ceiling for the models' GEMM-bound work, measured the way they run."""

    def __init__(self, engine: str = "inference", precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None, size: int = 2048):
        _check_choice("engine", engine, ENGINES)
        self.engine, self.precision, self.device, self.size = engine, precision, device, size
        rng = np.random.default_rng(0)
        if engine == "eager":
            if device == "gpu":
                _check_gpu("device='gpu'")
            elif precision != "fp32":
                raise ValueError(f"engine='eager' on CPU runs fp32 only (no eager {precision} CPU kernels)")
            else:
                _set_eager_threads(threads)
            place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
            dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
            self._a = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32), place=place).astype(dtype)
            self._b = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32), place=place).astype(dtype)
            self.flops = 2.0 * size ** 3
        else:
            self._x = rng.standard_normal((size, size), dtype=np.float32)
            with tempfile.TemporaryDirectory(prefix="ppim-ceiling-") as workdir:
                model_dir = _export_probe(_MatMul(size), Path(workdir) / "matmul", size)
                self._predictor = Predictor(model_dir, device=device, precision=precision, threads=threads)
            self.flops = 4.0 * size ** 3  # two GEMMs

    def _step(self) -> None:
        if self.engine == "eager":
            out = paddle.matmul(self._a, self._b)
            out.numpy() if self.device == "cpu" else paddle.device.cuda.synchronize()
        else:
            self._predictor(self._x)

    def measure(self, iters: int = 5, warmup: int = 1) -> float:
        """GFLOP/s, from the median of ``iters`` timed runs."""
        return self.flops / statistics.median(_time_calls(self._step, iters, warmup)) / 1e9


def measure_ceiling(engine: str = "inference", precision: str = "fp32", device: str = "cpu",
                    threads: Optional[int] = None, size: int = 2048, iters: int = 5, warmup: int = 2) -> float:
    """GFLOP/s of size^3 GEMMs through ``engine`` (see CeilingProbe)."""
    return CeilingProbe(engine, precision, device, threads, size).measure(iters, warmup)


def _export_probe(probe: nn.Layer, output_dir: Path, size: int) -> Path:
    """Export the matmul probe (input x: (size, size)) with a minimal ppim.json."""
    with _staged_dir(output_dir) as tmp:
        probe.eval()
        paddle.jit.save(probe, str(tmp / "model"),
                        input_spec=[paddle.static.InputSpec([size, size], "float32", name=INPUT_NAME)])
        manifest = {"format": "ppim-inference", "model": "matmul", "input_name": INPUT_NAME,
                    "input_shape": [size, size], "optimized": False}
        write_json(tmp / MANIFEST, manifest)
    return output_dir


def _subnet_list(model: nn.Layer, subnets: Optional[Iterable[Tuple[int, float]]]) -> List[Optional[Tuple[int, float]]]:
    if not is_supernet(model):
        return [None]
    chosen = list(subnets) if subnets else list(model.subnets)
    reference = (max(model.img_sizes), 1.0)
    if reference not in [(int(s), float(r)) for s, r in chosen]:
        chosen = [reference] + chosen  # speed-ups are relative to the full network
    return [(int(s), float(r)) for s, r in chosen]


def benchmark(model: Union[str, nn.Layer], engines: Sequence[str] = ENGINES, precisions: Sequence[str] = ("fp32",),
              batch_sizes: Sequence[int] = (1, 16), iters: int = 10, warmup: int = 2, threads: Optional[int] = None,
              device: str = "cpu", gmacs: Optional[float] = None,
              subnets: Optional[Iterable[Tuple[int, float]]] = None, ceiling: bool = True, ceiling_size: int = 2048,
              model_kwargs: Optional[Dict[str, Any]] = None, log: Optional[Callable[[str], None]] = None
              ) -> List[Dict[str, Any]]:
    """Throughput of ``model`` (a name, built with random weights, or a model) per engine, precision,
    batch size and, for super models, sub-network (all 12 by default).

    Each row: model, engine, precision, device, threads, batch_size, img_size (input side), subnet
    (super models: img_size and keep_ratio), images_per_sec (median over ``iters`` timed calls after
    ``warmup``), ms_per_batch, gmacs (per image), gflops_per_sec achieved (2 * MACs * images/s),
    ceiling_gflops_per_sec (``ceiling_size``^3 GEMMs through the same engine and precision, timed
    right after each point: see CeilingProbe), ceiling_share, ceiling_images_per_sec, and for super
    models speedup (images/s over that of (224, 1.0)) and flops_ratio (MACs of (224, 1.0) over the
    sub-network's). cpu_per_wall (process CPU time over wall time while the model ran) shows how
    many cores it really had: about ``threads`` on an idle machine, less when other processes
    compete. A combination that cannot run here (bf16 without CPU support, fp16 on CPU, GPU on a
    CPU build) gets a row with ``error`` and no timings. ``gmacs`` overrides ppim.flops' count
    (non-super models)."""
    log = log or (lambda message: None)
    if isinstance(model, str):
        model = create_model(model, **(model_kwargs or {}))
    name = model_name(model)
    model.eval()
    size = _input_size(model, None)
    threads_used = threads or (_default_threads() if device == "cpu" else None)
    probes: Dict[Tuple[str, str], Any] = {}
    ceiling_iters = max(3, min(iters, 5))
    rows: List[Dict[str, Any]] = []
    original = _current_subnet(model)
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batch_sizes}
    workdir = tempfile.TemporaryDirectory(prefix="ppim-benchmark-")
    try:
        for subnet in _subnet_list(model, subnets):
            exported = None
            if subnet is not None:
                model.set_subnet(*subnet)
            if subnet is None and gmacs is not None:
                macs = float(gmacs)
            else:
                macs = _model_gmacs(model, *(subnet or (None, None)))
            for engine in engines:
                for precision in precisions:
                    key = (engine, precision)
                    if ceiling and key not in probes:
                        try:
                            probes[key] = CeilingProbe(engine, precision, device, threads, ceiling_size)
                        except Exception as exc:  # noqa: BLE001 - reported in the rows
                            probes[key] = exc
                    base = {"model": name, "engine": engine, "precision": precision, "device": device,
                            "threads": threads_used, "img_size": size,
                            "subnet": None if subnet is None else {"img_size": subnet[0], "keep_ratio": subnet[1]},
                            "gmacs": macs, "paddle_version": paddle.__version__}
                    try:
                        if engine == "inference":  # one export per sub-network serves every precision
                            if exported is None:
                                exported = export(model, Path(workdir.name) / "model")
                            predictor = Predictor(exported, device=device, precision=precision, threads=threads)
                            runner = Runner(predictor, engine, precision, device, size, subnet, predictor.threads,
                                            predictor, exported)
                        else:
                            runner = create_runner(model, engine, precision, device, threads)
                    except Exception as exc:  # noqa: BLE001 - reported in the rows
                        for batch_size in batch_sizes:
                            rows.append({**base, "batch_size": batch_size, "error": f"{type(exc).__name__}: {exc}"})
                        log(f"{name} {engine}/{precision}: {exc}")
                        continue
                    for batch_size in batch_sizes:
                        batch = batches[batch_size]
                        cpu_start, wall_start = time.process_time(), time.perf_counter()
                        times = _time_calls(functools.partial(runner, batch), iters, warmup)
                        cpu_per_wall = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
                        # The ceiling is timed right after the model, so both see the same machine
                        # (other processes come and go on shared machines).
                        probe = probes.get(key)
                        peak = probe.measure(ceiling_iters) if isinstance(probe, CeilingProbe) else probe
                        seconds = statistics.median(times)
                        ips = batch_size / seconds
                        row = {**base, "batch_size": batch_size, "images_per_sec": ips,
                               "images_per_sec_mean": batch_size * len(times) / sum(times),
                               "ms_per_batch": seconds * 1e3, "gflops_per_sec": ips * 2 * macs,
                               "cpu_per_wall": cpu_per_wall}
                        if isinstance(peak, float):
                            row.update(ceiling_gflops_per_sec=peak, ceiling_share=row["gflops_per_sec"] / peak,
                                       ceiling_images_per_sec=peak / (2 * macs))
                        elif isinstance(peak, Exception):
                            row["ceiling_error"] = f"{type(peak).__name__}: {peak}"
                        rows.append(row)
                        log(format_rows([row], header=False))
                    runner = None  # free the predictor before the next is made
    finally:
        workdir.cleanup()
        if original is not None:
            model.set_subnet(*original)
    _add_speedups(rows)
    return rows


def _add_speedups(rows: List[Dict[str, Any]]) -> None:
    """Super models: speed-up and FLOPs ratio of each sub-network against (224, 1.0), same
    engine/precision/batch."""
    full = {}
    for row in rows:
        sub = row.get("subnet")
        if sub and sub["keep_ratio"] == 1.0 and "images_per_sec" in row:
            current = full.get((row["engine"], row["precision"], row["batch_size"]))
            if current is None or sub["img_size"] > current["subnet"]["img_size"]:
                full[(row["engine"], row["precision"], row["batch_size"])] = row
    for row in rows:
        ref = full.get((row["engine"], row["precision"], row["batch_size"]))
        if row.get("subnet") and ref and "images_per_sec" in row:
            row["speedup"] = row["images_per_sec"] / ref["images_per_sec"]
            row["flops_ratio"] = ref["gmacs"] / row["gmacs"]


def format_rows(rows: List[Dict[str, Any]], header: bool = True) -> str:
    """A text table of benchmark rows."""
    columns = [("engine", "{:<9}"), ("precision", "{:<4}"), ("batch", "{:>5}"), ("subnet", "{:<9}"),
               ("img/s", "{:>8}"), ("ms/batch", "{:>9}"), ("GMACs", "{:>6}"), ("GFLOP/s", "{:>8}"),
               ("ceiling", "{:>8}"), ("share", "{:>6}"), ("speedup", "{:>7}"), ("flops x", "{:>7}"),
               ("cores", "{:>5}")]
    lines = []
    if header:
        lines.append(" ".join(fmt.format(title) for title, fmt in columns))
    for row in rows:
        sub = row.get("subnet")
        cells = [row["engine"], row["precision"], row["batch_size"],
                 f"{sub['img_size']}x{sub['keep_ratio']:g}" if sub else "-"]
        if "error" in row:
            lines.append(" ".join(fmt.format(c) for (_, fmt), c in zip(columns, cells)) + "  " + row["error"])
            continue

        def num(key, spec):
            return format(row[key], spec) if row.get(key) is not None else "-"

        cells += [num("images_per_sec", ".2f"), num("ms_per_batch", ".1f"), num("gmacs", ".2f"),
                  num("gflops_per_sec", ".1f"), num("ceiling_gflops_per_sec", ".1f"),
                  f"{row['ceiling_share']:.0%}" if row.get("ceiling_share") is not None else "-",
                  num("speedup", ".2f"), num("flops_ratio", ".2f"), num("cpu_per_wall", ".1f")]
        lines.append(" ".join(fmt.format(c) for (_, fmt), c in zip(columns, cells)))
    return "\n".join(lines)
