"""The engine registry: one record per engine, read by create_runner, engine='auto', the benchmark and
its ceiling, the command lines' --engine choices, the Predictor checks and every "cannot run here"
message. Adding an engine is adding one EngineSpec to ENGINE_SPECS.

    unsupported("inference", "bf16")        # None, or why this machine cannot (ppim.runtime decides)
    check_supported("openvino", "bf16")     # or CapabilityError naming what runs here
    resolve_engine("auto", "cpu", "fp32")   # the fastest engine that runs here
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..runtime import CAPABILITIES, extra_installed, missing
from ..errors import CapabilityError, InputError, MissingExtraError

__all__ = ["EngineSpec", "ENGINE_SPECS", "ENGINES", "ENGINE_CHOICES", "PRECISIONS", "DEVICES", "engine_spec",
           "engine_available", "unsupported", "check_supported", "runs_here", "resolve_engine", "auto_order",
           "exported_engines", "create_predictor", "quantizer", "check_choice"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
DEVICES = ("cpu", "gpu")
_GPU_NEEDS = {"fp32": ("gpu",), "fp16": ("gpu", "gpu_fp16"), "bf16": ("gpu", "gpu_bf16")}


@dataclass(frozen=True)
class EngineSpec:
    """One engine. ``precisions``: per device, the precisions it has kernels for; ``needs``: per
    (device, precision), the ppim.runtime capabilities it needs beyond that; ``extras``: the modules it
    imports (installed by ``pip install 'ppim[<name>]'``); ``predictor``: 'module:Class' of its
    predictor over an export (None: the eager model itself runs); ``auto_rank``: its place in
    engine='auto' (fastest first; None: never chosen by auto); ``fused_attention``: runs exports with
    Paddle's fused CPU attention op; ``quantizer``: 'module:function' that adds the int8 form of an
    export, calibrated on images (``function(model, model_dir, calibration)``: the eval-mode model and
    its export; see ppim.deploy.quantize);
    ``precision_extras``: per precision, modules it imports beyond ``extras``."""
    name: str
    summary: str
    precisions: Dict[str, Tuple[str, ...]]
    needs: Dict[Tuple[str, str], Tuple[str, ...]] = field(default_factory=dict)
    extras: Tuple[str, ...] = ()
    predictor: Optional[str] = None
    auto_rank: Optional[int] = None
    fused_attention: bool = False
    quantizer: Optional[str] = None
    precision_extras: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    @property
    def devices(self) -> Tuple[str, ...]:
        return tuple(self.precisions)

    @property
    def exported(self) -> bool:
        """True for the engines that run the model's export (the others run the model itself)."""
        return self.predictor is not None


# auto_rank: measured on lvvit_s, batch 16, interleaved in one run on a loaded 2-core machine: fp32
# OpenVINO 1.75, Paddle Inference (fused attention export) 1.49, ONNX Runtime 1.26 img/s; bf16
# OpenVINO 2.01, Paddle Inference 1.84. Rerun benchmarks/peers.py to check on other machines.
ENGINE_SPECS: Tuple[EngineSpec, ...] = (
    EngineSpec("eager", "the Paddle model itself (fp32 on CPU; autocast on GPU)",
               precisions={"cpu": ("fp32",), "gpu": ("fp32", "fp16", "bf16")},
               needs={("gpu", p): n for p, n in _GPU_NEEDS.items()}),
    EngineSpec("inference", "Paddle Inference over the export (oneDNN on CPU, int8 by Paddle's PTQ; GPU, TensorRT)",
               precisions={"cpu": ("fp32", "bf16", "int8"), "gpu": ("fp32", "fp16", "bf16")},
               needs={("cpu", "bf16"): ("cpu_bf16", "onednn"), ("cpu", "int8"): ("cpu_int8", "onednn", "paddle_int8"),
                      **{("gpu", p): n for p, n in _GPU_NEEDS.items()}},
               predictor="ppim.deploy.predictor:Predictor", auto_rank=1, fused_attention=True,
               quantizer="ppim.deploy.paddle_int8:quantize_paddle"),
    EngineSpec("openvino", "OpenVINO's CPU plugin over the export's ONNX form (optional extra; int8 by NNCF)",
               precisions={"cpu": ("fp32", "bf16", "int8")},
               needs={("cpu", "bf16"): ("cpu_bf16",), ("cpu", "int8"): ("cpu_int8",)},
               extras=("openvino", "paddle2onnx"), predictor="ppim.deploy.engines:OpenVINOPredictor", auto_rank=0,
               quantizer="ppim.deploy.engines:quantize_openvino", precision_extras={"int8": ("nncf",)}),
    EngineSpec("onnxruntime", "ONNX Runtime's CPU provider over the export's ONNX form (optional extra)",
               precisions={"cpu": ("fp32",)}, extras=("onnxruntime", "paddle2onnx"),
               predictor="ppim.deploy.engines:OnnxRuntimePredictor", auto_rank=2),
)
_BY_NAME = {spec.name: spec for spec in ENGINE_SPECS}
ENGINES = tuple(_BY_NAME)
ENGINE_CHOICES = ENGINES + ("auto",)  # auto: the fastest that runs here (resolve_engine)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def engine_spec(name: str) -> EngineSpec:
    check_choice("engine", name, ENGINES)
    return _BY_NAME[name]


def engine_available(name: str) -> bool:
    """True when the engine's extra modules are installed (always for Paddle's own engines)."""
    return all(extra_installed(module) for module in engine_spec(name).extras)


def _missing_extra(spec: EngineSpec, precision: Optional[str] = None) -> Optional[str]:
    modules = spec.extras + spec.precision_extras.get(precision, ())
    absent = [module for module in modules if not extra_installed(module)]
    if absent:
        return f"{' and '.join(absent)} not installed (pip install 'ppim[{spec.name}]')"
    return None


def unsupported(engine: str, precision: str, device: str = "cpu") -> Optional[str]:
    """Why ``engine`` cannot run ``precision`` on ``device`` on this machine, or None when it can."""
    spec = engine_spec(engine)
    check_choice("precision", precision, PRECISIONS)
    check_choice("device", device, DEVICES)
    if device not in spec.precisions:
        return f"{engine} runs on {' and '.join(spec.devices)} only"
    if device == "gpu":
        reason = missing("gpu")
        if reason:
            return reason
    if precision not in spec.precisions[device]:
        if device == "cpu" and precision == "fp16":
            return "fp16 needs a GPU (CPUs run bf16)"
        return f"{engine} runs {' and '.join(spec.precisions[device])} only on {device}"
    reason = _missing_extra(spec, precision)
    if reason:
        return reason
    for name in spec.needs.get((device, precision), ()):
        reason = missing(name)
        if reason:
            return f"{precision} needs {CAPABILITIES[name].needs}: {reason}"
    return None


def runs_here(device: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """(engine, precision, device) of every combination this machine runs (device: only that one)."""
    return [(spec.name, precision, dev) for spec in ENGINE_SPECS for dev in spec.devices
            if device in (None, dev) for precision in spec.precisions[dev]
            if unsupported(spec.name, precision, dev) is None]


def _runs_here_text(device: str) -> str:
    found = runs_here(device) or runs_here("cpu")
    by_engine: Dict[str, List[str]] = {}
    for engine, precision, dev in found:
        by_engine.setdefault(f"{engine} on {dev}", []).append(precision)
    listed = "; ".join(f"{what} {'/'.join(p)}" for what, p in by_engine.items())
    return f"what runs here: {listed or 'nothing'} (python -m ppim env says why)"


def check_supported(engine: str, precision: str, device: str = "cpu") -> None:
    """Raise CapabilityError (MissingExtraError for an extra not installed) saying why ``engine``
    cannot run ``precision`` on ``device`` here and what does run here."""
    reason = unsupported(engine, precision, device)
    if reason is None:
        return
    message = f"engine={engine!r} precision={precision!r} device={device!r}: {reason}; {_runs_here_text(device)}"
    if _missing_extra(engine_spec(engine), precision) == reason:
        raise MissingExtraError(message)
    raise CapabilityError(message)


def auto_order(device: str = "cpu", precision: str = "fp32") -> List[str]:
    """The engines engine='auto' tries for ``device`` and ``precision``, fastest first (whether or not
    they run here)."""
    ranked = sorted((spec for spec in ENGINE_SPECS if spec.auto_rank is not None), key=lambda s: s.auto_rank)
    return [spec.name for spec in ranked if precision in spec.precisions.get(device, ())]


def resolve_engine(engine: str, device: str = "cpu", precision: str = "fp32") -> str:
    """``engine``, or for 'auto' the fastest engine that runs ``precision`` on ``device`` here
    (auto_order); CapabilityError when none does."""
    check_choice("engine", engine, ENGINE_CHOICES)
    if engine != "auto":
        return engine
    for candidate in auto_order(device, precision):
        if unsupported(candidate, precision, device) is None:
            return candidate
    check_supported("inference", precision, device)  # raises, saying why and what runs
    return "inference"


def exported_engines(precision: str = "fp32", device: str = "cpu") -> List[str]:
    """The engines over an export that run ``precision`` on ``device`` here (the benchmark's ceiling
    engines)."""
    return [spec.name for spec in ENGINE_SPECS if spec.exported and unsupported(spec.name, precision, device) is None]


def create_predictor(engine: str, model_dir: Any, **kwargs: Any) -> Any:
    """The predictor of an exported ``engine`` over ``model_dir`` (kwargs: device, precision, threads)."""
    spec = engine_spec(engine)
    if not spec.exported:
        raise InputError(f"engine={engine!r} runs the model itself, not an export")
    return _resolve(spec.predictor)(model_dir, **kwargs)


def quantizer(engine: str) -> Any:
    """``engine``'s quantizer function (see EngineSpec.quantizer); CapabilityError naming the engines
    that have one when it has none."""
    spec = engine_spec(engine)
    if spec.quantizer is None:
        raise CapabilityError(f"engine={engine!r} has no int8 form: int8 runs in "
                              f"{', '.join(s.name for s in ENGINE_SPECS if s.quantizer)}")
    return _resolve(spec.quantizer)


def _resolve(reference: str) -> Any:
    """The object a 'module:name' reference names (imported when first asked for: the engines'
    modules import their extras)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
