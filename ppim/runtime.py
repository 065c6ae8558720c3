"""What this process can run: the one place that knows the machine.

    from ppim import runtime
    m = runtime.machine()            # CPU vendor/model/flags, Paddle, devices, extras: read once
    runtime.missing("cpu_bf16")      # None, or why this machine cannot (one sentence)
    runtime.require("fused_attention", "the fused attention export")   # or CapabilityError
    with runtime.simulate("avx2"):   # another machine, for tests (PPIM_SIMULATE_MACHINE for children)
        ...

* :func:`machine` reads /proc/cpuinfo (nothing else in ppim does), Paddle's build (version, PIR,
  CUDA, oneDNN, math library), the GPUs and their compute capability, and the optional extras, once
  per process. Paddle is imported only when a Paddle fact is first asked for, so modules that import
  this one still import without Paddle.
* :data:`CAPABILITIES` names every requirement ppim gates a kernel, pass, precision or device on:
  what it needs, what it guards, and its check. Paddle kernels whose instruction needs are not
  documented also have a canary: a tiny call in a child process, once per (CPU model and flags,
  Paddle version), its verdict cached in ``$PPIM_HOME/runtime``. A child killed by a signal (SIGILL
  on a CPU without the instructions) means "unavailable", so an unknown requirement cannot kill the
  user's process.
* Simulated machines (:data:`PROFILES`: avx2, avx512, avx512-bf16-amx, gpu) replace the real one for
  every check: ``PPIM_SIMULATE_MACHINE=avx2`` (inherited by child processes) or ``simulate("avx2")``;
  ``"avx2:openvino,paddle2onnx"`` also fixes which extras count as installed (``"avx2:"``: none).
  Canaries are not run under simulation: a simulated machine runs what its stated flags allow.
* Process settings shared by every module: CPU math threads (:func:`cpu_threads`, scoped),
  the default device, :func:`dist_info`, :func:`unwrap_parallel` (paddle.DataParallel),
  :func:`paddle_core` (paddle.base / paddle.fluid) and :func:`exit_with_parent` (worker processes).

Imports only ppim.errors and ppim.fileio (both leaves).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from .errors import CapabilityError, InputError
from .fileio import ppim_home, write_json

__all__ = ["SIMULATE_ENV", "PROFILES", "EXTRAS", "BF16_FLAGS", "Machine", "Capability", "Canary", "CAPABILITIES",
           "cpu", "machine", "simulate", "missing", "has", "require", "canary_verdict", "extra_installed", "cpu_count",
           "cpu_threads", "set_cpu_threads", "current_cpu_threads", "default_device", "dist_info",
           "unwrap_parallel", "paddle_core", "exit_with_parent", "describe"]

#: Environment variable naming a simulated machine profile (child processes inherit it).
SIMULATE_ENV = "PPIM_SIMULATE_MACHINE"
#: Optional packages whose presence changes what ppim can do (module names).
EXTRAS = ("openvino", "nncf", "onnxruntime", "paddle2onnx", "matplotlib", "visualdl", "torch")
#: CPU flags of native bfloat16 arithmetic (either is enough for oneDNN's and OpenVINO's bf16 kernels).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The flags the report lists (the ones that decide which kernels run; /proc/cpuinfo has ~100).
REPORTED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                  "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Machine:
    """What this process can use. ``gpus``: the compute capability (major, minor) of each visible GPU;
    ``extras``: (module, version) of the optional packages installed; ``profile``: the simulated
    profile's name, None for the real machine."""
    cpu_vendor: str
    cpu_model: str
    cpu_flags: FrozenSet[str]
    cpu_count: int
    paddle_version: Optional[str]
    pir: bool
    cuda_build: bool
    gpus: Tuple[Tuple[int, int], ...]
    onednn: bool
    math_library: str
    tensorrt: bool = False
    extras: Tuple[Tuple[str, str], ...] = ()
    profile: Optional[str] = None

    def has_flag(self, *flags: str) -> bool:
        """True when the CPU has any of ``flags`` (names as in /proc/cpuinfo)."""
        return any(flag in self.cpu_flags for flag in flags)

    def extra_version(self, module: str) -> Optional[str]:
        return dict(self.extras).get(module)


# ----------------------------------------------------------------------------------------------
# The real machine, read once
# ----------------------------------------------------------------------------------------------
def _read_cpu() -> Tuple[str, str, FrozenSet[str]]:
    """(vendor, model name, flags) of the first CPU in /proc/cpuinfo; elsewhere what platform says
    and no flags (so no feature is ever assumed)."""
    vendor, model, flags = "", "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key in ("model name", "Model", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                elif not line.strip() and flags:
                    break  # the first processor's block is enough
    except OSError:
        pass
    return vendor or platform.machine(), model or platform.processor() or "unknown CPU", flags


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _extras() -> Tuple[Tuple[str, str], ...]:
    found = []
    for module in EXTRAS:
        if importlib.util.find_spec(module) is None:
            continue
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            version = "installed"
        found.append((module, version))
    return tuple(found)


def paddle_core() -> Any:
    """Paddle's C++ core module (``paddle.base.core`` on 2.6+/3.x, ``paddle.fluid.core`` before)."""
    import paddle

    return paddle.base.core if hasattr(paddle, "base") else paddle.fluid.core


def _paddle_facts() -> Dict[str, Any]:
    try:
        import paddle
    except ImportError:
        return {"paddle_version": None, "pir": False, "cuda_build": False, "gpus": (), "onednn": False,
                "math_library": "none", "tensorrt": False}
    core = paddle_core()
    check = getattr(core, "is_compiled_with_onednn", None) or getattr(core, "is_compiled_with_mkldnn", None)
    try:
        pir = bool(paddle.get_flags("FLAGS_enable_pir_api").get("FLAGS_enable_pir_api", False))
    except (ValueError, AttributeError):  # a Paddle without the flag: no PIR programs
        pir = False
    pir = pir and getattr(paddle.framework, "in_pir_mode", None) is not None
    cuda = bool(paddle.is_compiled_with_cuda())
    gpus: List[Tuple[int, int]] = []
    if cuda:
        try:
            for index in range(paddle.device.cuda.device_count()):
                major, minor = paddle.device.cuda.get_device_capability(index)
                gpus.append((int(major), int(minor)))
        except Exception:  # noqa: BLE001 - a broken driver: no usable GPU
            gpus = []
    try:
        tensorrt = tuple(paddle.inference.get_trt_compile_version()) != (0, 0, 0)
    except Exception:  # noqa: BLE001 - absent on some builds
        tensorrt = False
    version = paddle.version
    mkl = getattr(version, "with_mkl", "OFF")
    mkl = mkl() if callable(mkl) else mkl
    return {"paddle_version": paddle.__version__, "pir": pir, "cuda_build": cuda, "gpus": tuple(gpus),
            "onednn": bool(check()) if check else False, "tensorrt": tensorrt,
            "math_library": "MKL" if str(mkl).upper() == "ON" else "OpenBLAS"}


_LOCK = threading.Lock()
_REAL: Dict[str, Machine] = {}
_CPU: Dict[str, Tuple[str, str, FrozenSet[str]]] = {}


def _real_machine() -> Machine:
    with _LOCK:
        if "real" not in _REAL:
            vendor, model, flags = _CPU.setdefault("cpu", _read_cpu())
            _REAL["real"] = Machine(cpu_vendor=vendor, cpu_model=model, cpu_flags=flags, cpu_count=cpu_count(),
                                    extras=_extras(), **_paddle_facts())
        return _REAL["real"]


# ----------------------------------------------------------------------------------------------
# Simulated machines
# ----------------------------------------------------------------------------------------------
_AVX2 = ("sse4_2", "avx", "avx2", "fma", "f16c")
_AVX512 = _AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni")
#: name -> (description, CPU vendor, CPU model, flags, GPU compute capabilities)
PROFILES: Dict[str, Tuple[str, str, str, Tuple[str, ...], Tuple[Tuple[int, int], ...]]] = {
    "avx2": ("AVX2 only (AMD EPYC Rome-like cloud CPU)", "AuthenticAMD", "AMD EPYC (simulated, AVX2)", _AVX2, ()),
    "avx512": ("AVX-512 without bf16 (Intel Skylake/Cascade Lake-like)", "GenuineIntel",
               "Intel Xeon (simulated, AVX-512)", _AVX512, ()),
    "avx512-bf16-amx": ("AVX-512 with bf16 and AMX (Intel Sapphire Rapids-like)", "GenuineIntel",
                        "Intel Xeon (simulated, AVX-512 bf16 AMX)",
                        _AVX512 + ("avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"), ()),
    "gpu": ("AVX2 CPU with one NVIDIA GPU of compute capability 8.0 (A100-like), CUDA build of Paddle",
            "AuthenticAMD", "AMD EPYC (simulated, AVX2, with a GPU)", _AVX2, ((8, 0),)),
}


_SIMULATED: Dict[str, Machine] = {}


def _simulated(spec: str) -> Machine:
    if spec in _SIMULATED:
        return _SIMULATED[spec]
    name, has_extras, listed = spec.partition(":")
    name = name.strip()
    if name not in PROFILES:
        raise InputError(f"{SIMULATE_ENV}={spec!r}: no such machine profile; choose one of {', '.join(PROFILES)} "
                         f"(optionally ':' and the installed extras, e.g. avx2:openvino,paddle2onnx)")
    _, vendor, model, flags, gpus = PROFILES[name]
    real = _real_machine()
    extras = real.extras
    if has_extras:
        extras = tuple((module.strip(), "simulated") for module in listed.split(",") if module.strip())
    # Paddle's version and PIR are the installed Paddle's; its build is the common PyPI wheel's
    # (oneDNN on x86), with CUDA and TensorRT exactly when the profile has GPUs.
    simulated = replace(real, cpu_vendor=vendor, cpu_model=model, cpu_flags=frozenset(flags), gpus=gpus,
                        cuda_build=bool(gpus), tensorrt=bool(gpus), onednn=True, extras=extras, profile=spec)
    _SIMULATED[spec] = simulated
    return simulated


def cpu() -> Tuple[str, str, FrozenSet[str]]:
    """(vendor, model, flags) of this machine's CPU, or of the simulated one, without loading Paddle
    (ppim.mathtune needs the vendor before Paddle's MKL loads)."""
    name = os.environ.get(SIMULATE_ENV, "").strip().partition(":")[0].strip()
    if name in PROFILES:  # (an unknown profile name is reported by machine())
        _, vendor, model, flags, _ = PROFILES[name]
        return vendor, model, frozenset(flags)
    with _LOCK:
        if "cpu" not in _CPU:
            _CPU["cpu"] = _read_cpu()
        return _CPU["cpu"]


def machine() -> Machine:
    """This machine (read once), or the simulated one ``PPIM_SIMULATE_MACHINE`` names."""
    spec = os.environ.get(SIMULATE_ENV, "").strip()
    return _simulated(spec) if spec else _real_machine()


@contextlib.contextmanager
def simulate(profile: str, extras: Optional[Sequence[str]] = None) -> Iterator[Machine]:
    """Make every check answer for the machine ``profile`` (see PROFILES) inside the block, and in the
    child processes started there (through PPIM_SIMULATE_MACHINE). ``extras``: the optional modules
    that count as installed (default: the ones really installed)."""
    spec = profile if extras is None else f"{profile}:{','.join(extras)}"
    simulated = _simulated(spec)  # a bad name fails here, before anything changes
    saved = os.environ.get(SIMULATE_ENV)
    os.environ[SIMULATE_ENV] = spec
    try:
        yield simulated
    finally:
        if saved is None:
            os.environ.pop(SIMULATE_ENV, None)
        else:
            os.environ[SIMULATE_ENV] = saved


def extra_installed(module: str) -> bool:
    """True when the optional module is installed (or counts as installed on a simulated machine)."""
    return machine().extra_version(module) is not None


# ----------------------------------------------------------------------------------------------
# Canaries: a tiny call in a child process for kernels whose instruction needs are undocumented
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """``code`` (Python run by ``python -c`` in a child process) exits 0 where the kernel runs. Any
    other end (a signal such as SIGILL, an exception, a wrong number) means unavailable; only a run
    that exceeds ``timeout`` seconds is not a verdict (and is not cached)."""
    name: str
    code: str
    timeout: float = 180.0


_VERDICTS: Dict[str, Optional[str]] = {}


def _canary_key(canary: Canary, real: Machine) -> str:
    facts = {"cpu": real.cpu_model, "flags": sorted(real.cpu_flags), "paddle": real.paddle_version,
             "python": sys.version_info[:2], "name": canary.name, "code": canary.code}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _run_canary(canary: Canary) -> Tuple[Optional[str], bool]:
    """(why not, or None when it ran; whether that is a verdict to keep)."""
    env = {k: v for k, v in os.environ.items() if k != SIMULATE_ENV}
    env.setdefault("GLOG_minloglevel", "3")
    try:
        done = subprocess.run([sys.executable, "-c", "import zlib\n" + canary.code], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=canary.timeout)
    except subprocess.TimeoutExpired:
        return f"its test call did not finish in {canary.timeout:g}s", False
    if done.returncode == 0:
        return None, True
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"its test call was killed by {name} (this CPU lacks instructions the kernel uses)", True
    lines = [line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return f"its test call failed ({lines[-1] if lines else f'exit status {done.returncode}'})", True


def canary_verdict(canary: Canary) -> Optional[str]:
    """None when ``canary`` runs on this machine, else why not. Run once per (CPU model and flags,
    Paddle version, Python version, canary code); the verdict is kept in this process and in
    ``$PPIM_HOME/runtime/canary-<name>-<key>.json``. Not run under a simulated machine (None)."""
    real = machine()
    if real.profile is not None:
        return None
    key = _canary_key(canary, real)
    if key in _VERDICTS:
        return _VERDICTS[key]
    path = ppim_home() / "runtime" / f"canary-{canary.name}-{key}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("ok"), bool):
            verdict = None if saved["ok"] else str(saved.get("reason") or "failed before")
            _VERDICTS[key] = verdict
            return verdict
    except (OSError, ValueError):
        pass  # none yet, or unreadable: run it
    verdict, keep = _run_canary(canary)
    if keep:
        _VERDICTS[key] = verdict
        with contextlib.suppress(OSError):  # a read-only PPIM_HOME: the verdict lives for this process
            write_json(path, {"key": key, "name": canary.name, "ok": verdict is None, "reason": verdict,
                              "cpu": real.cpu_model, "paddle": real.paddle_version, "time": int(time.time())})
    return verdict


#: Paddle 3.x's fused CPU attention kernel (phi SelfDPAttenKernel), checked against plain attention.
FUSED_ATTENTION_CANARY = Canary("self_dp_attention", """
import numpy as np, paddle
qkv = np.random.default_rng(0).standard_normal((1, 5, 3, 2, 16)).astype("float32")
paddle.enable_static()  # the op exists in PIR programs only, as in an export
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    y = paddle._C_ops.self_dp_attention(paddle.static.data("x", [1, 5, 3, 2, 16], "float32"), 0.25, 2)
out, = paddle.static.Executor(paddle.CPUPlace()).run(main, feed={"x": qkv}, fetch_list=[y])
q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
s = q @ k.transpose(0, 1, 3, 2) * 0.25
p = np.exp(s - s.max(-1, keepdims=True))
ref = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3)
assert np.abs(out - ref).max() < 1e-4, "wrong result"
""")

#: Eager bfloat16 matmul on the CPU (autocast): Paddle 3.3's CPU wheel has none, autocast stays fp32.
EAGER_BF16_CANARY = Canary("eager_bf16_matmul", """
import paddle
with paddle.amp.auto_cast(enable=True, dtype="bfloat16", level="O1"):
    out = paddle.nn.functional.linear(paddle.ones([2, 4]), paddle.ones([4, 4]))
assert out.dtype == paddle.bfloat16, f"this Paddle has no eager bfloat16 CPU matmul (autocast gives {out.dtype})"
assert float(out.astype("float32").sum()) == 32.0, "wrong result"
""")


# ----------------------------------------------------------------------------------------------
# Capabilities: each requirement ppim gates something on
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capability:
    """``check(machine)`` -> None or why not; then ``canary`` (if any) must pass too."""
    name: str
    needs: str
    guards: str
    check: Callable[[Machine], Optional[str]]
    canary: Optional[Canary] = field(default=None)


def _cpu_name(m: Machine) -> str:
    return f"this CPU ({m.cpu_model})"


def _need_flags(flags: Sequence[str]) -> Callable[[Machine], Optional[str]]:
    def check(m: Machine) -> Optional[str]:
        if m.has_flag(*flags):
            return None
        return f"{_cpu_name(m)} has {'neither ' + ' nor '.join(flags) if len(flags) == 2 else 'no ' + flags[0]}"
    return check


def _gpu(m: Machine) -> Optional[str]:
    if not m.cuda_build:
        return f"this Paddle {m.paddle_version} is a CPU-only build (pip install paddlepaddle-gpu)"
    if not m.gpus:
        return "Paddle is built with CUDA but sees no GPU (check CUDA_VISIBLE_DEVICES and the driver)"
    return None


def _gpu_capability(minimum: Tuple[int, int], what: str) -> Callable[[Machine], Optional[str]]:
    def check(m: Machine) -> Optional[str]:
        reason = _gpu(m)
        if reason:
            return reason
        if m.gpus[0] < minimum:
            return (f"GPU 0 has compute capability {m.gpus[0][0]}.{m.gpus[0][1]}; {what} needs "
                    f"{minimum[0]}.{minimum[1]} or newer")
        return None
    return check


def _fused_attention(m: Machine) -> Optional[str]:
    if not m.pir:
        return f"Paddle {m.paddle_version} writes no PIR programs (the op is Paddle 3.x's)"
    import paddle

    if not hasattr(paddle._C_ops, "self_dp_attention"):
        return f"Paddle {m.paddle_version} has no self_dp_attention op"
    return _need_flags(("avx512f",))(m)


def _onednn(m: Machine) -> Optional[str]:
    return None if m.onednn else f"this Paddle {m.paddle_version} is built without oneDNN"


def _paddle_int8(m: Machine) -> Optional[str]:
    # The route (PTQ, a legacy program, oneDNN's int8 passes) is measured and tested on Paddle 3.x only.
    major = (m.paddle_version or "0").split(".")[0]
    if major.isdigit() and int(major) >= 3:
        return None
    return f"Paddle {m.paddle_version}: ppim's Paddle Inference int8 is tested on Paddle 3.x only (use engine openvino)"


def _eager_bf16(m: Machine) -> Optional[str]:
    return _need_flags(BF16_FLAGS)(m)


#: name -> Capability: every requirement a kernel, pass, precision or device of ppim is gated on.
CAPABILITIES: Dict[str, Capability] = {c.name: c for c in (
    Capability("cpu_bf16", "a CPU with avx512_bf16 or amx_bf16",
               "bf16 inference on the CPU (Paddle Inference's oneDNN bf16 pass, OpenVINO's bf16 hint)",
               _need_flags(BF16_FLAGS)),
    Capability("onednn", "Paddle built with oneDNN", "bf16 and int8 in Paddle Inference on the CPU", _onednn),
    # int8 GEMMs need AVX2's 8-bit multiply-adds at least (avx512_vnni, avx_vnni and amx_int8 run them faster).
    Capability("cpu_int8", "a CPU with avx2", "int8 inference on the CPU (OpenVINO's and oneDNN's int8 kernels)",
               _need_flags(("avx2",))),
    Capability("paddle_int8", "Paddle 3.x", "int8 in Paddle Inference (ppim.deploy.paddle_int8)", _paddle_int8),
    Capability("fused_attention", "Paddle 3.x (PIR) with the self_dp_attention op and a CPU with avx512f "
               "(Paddle's self_attention_fuse_pass emits it only there), and its canary",
               "the fused-attention export layout (Paddle Inference fp32 on the CPU)", _fused_attention,
               FUSED_ATTENTION_CANARY),
    Capability("eager_cpu_bf16", "a CPU with avx512_bf16 or amx_bf16 and an eager bf16 matmul kernel (canary)",
               "bf16 autocast training on the CPU (--amp) and the benchmark's bf16 training rows", _eager_bf16,
               EAGER_BF16_CANARY),
    Capability("gpu", "a CUDA build of Paddle that sees a GPU", "device='gpu' (every engine)", _gpu),
    Capability("gpu_fp16", "a GPU of compute capability 5.3 or newer (native half arithmetic)",
               "fp16 on the GPU", _gpu_capability((5, 3), "fp16")),
    Capability("tensorrt", "a CUDA build of Paddle with TensorRT and a GPU", "Predictor(tensorrt=True)",
               lambda m: _gpu(m) or (None if m.tensorrt else f"this Paddle {m.paddle_version} is built without "
                                     f"TensorRT (paddle.inference.get_trt_compile_version() is 0.0.0)")),
    Capability("gpu_bf16", "a GPU of compute capability 8.0 or newer (native bfloat16 arithmetic)",
               "bf16 on the GPU", _gpu_capability((8, 0), "bf16")),
)}


def missing(name: str) -> Optional[str]:
    """None when this machine has capability ``name`` (see CAPABILITIES), else why not."""
    capability = CAPABILITIES[name]
    reason = capability.check(machine())
    if reason is None and capability.canary is not None:
        reason = canary_verdict(capability.canary)
    return reason


def has(name: str) -> bool:
    return missing(name) is None


def require(name: str, what: str) -> None:
    """CapabilityError "``what`` needs ...: <why not>" unless this machine has capability ``name``."""
    reason = missing(name)
    if reason:
        raise CapabilityError(f"{what} needs {CAPABILITIES[name].needs}: {reason}")


# ----------------------------------------------------------------------------------------------
# Process settings
# ----------------------------------------------------------------------------------------------
_THREADS: List[Optional[int]] = [None]  # Paddle's eager CPU math threads as last set here


def set_cpu_threads(threads: Optional[int] = None) -> int:
    """Set Paddle's eager CPU math threads for the whole process (``threads``, default every CPU this
    process may use; Paddle starts with FLAGS_paddle_num_threads, 1). Returns the number set."""
    threads = int(threads or cpu_count())
    paddle_core().set_num_threads(threads)
    _THREADS[0] = threads
    return threads


def current_cpu_threads() -> int:
    """Paddle's eager CPU math threads now (as set here, else Paddle's FLAGS_paddle_num_threads)."""
    if _THREADS[0] is None:
        import paddle

        try:
            return int(paddle.get_flags("FLAGS_paddle_num_threads")["FLAGS_paddle_num_threads"])
        except (ValueError, KeyError):
            return 1
    return _THREADS[0]


@contextlib.contextmanager
def cpu_threads(threads: Optional[int] = None) -> Iterator[int]:
    """Paddle's eager CPU math threads set to ``threads`` (default every CPU this process may use)
    inside the block, and set back to what they were after it."""
    previous = current_cpu_threads()
    try:
        yield set_cpu_threads(threads)
    finally:
        set_cpu_threads(previous)


def default_device() -> str:
    """'gpu' when Paddle has CUDA and sees a GPU, else 'cpu'."""
    return "gpu" if has("gpu") else "cpu"


def dist_info(distributed: Optional[bool] = None) -> Tuple[int, int]:
    """(rank, world_size). ``None``: distributed when started by paddle.distributed.launch with more
    than one process (PADDLE_TRAINERS_NUM > 1); the process group is initialised here if needed."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
    if distributed is None:
        distributed = world > 1
    if not distributed:
        return 0, 1
    import paddle.distributed as dist

    if not dist.is_initialized():
        dist.init_parallel_env()  # gloo on CPU (launch sets PADDLE_DISTRI_BACKEND), NCCL on GPUs
    return dist.get_rank(), dist.get_world_size()


def unwrap_parallel(model: Any) -> Any:
    """The layer inside a paddle.DataParallel wrapper (whose parameter names gain a '_layers.' prefix
    and which hides the model's own methods), else ``model``."""
    import paddle

    return model._layers if isinstance(model, paddle.DataParallel) else model


_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Make this (worker) process end when ``parent_pid`` ends, however it ends (SIGKILL included):
    Linux's PR_SET_PDEATHSIG delivers SIGTERM at the parent's death; everywhere, a daemon thread also
    checks every ``interval`` seconds that the parent is still this process's parent and exits if not."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc by that name: the watchdog remains
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="ppim-parent-watchdog", daemon=True).start()


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def describe() -> List[str]:
    """Lines saying what this machine is and which capabilities it has (``python -m ppim env`` adds
    the engines and precisions)."""
    m = machine()
    flags = [flag for flag in REPORTED_FLAGS if flag in m.cpu_flags]
    gpus = ", ".join(f"GPU {i}: compute capability {a}.{b}" for i, (a, b) in enumerate(m.gpus)) or "none"
    lines = [
        f"machine:  {'simulated profile ' + m.profile if m.profile else 'real'}",
        f"python:   {platform.python_version()} on {platform.platform()}",
        f"cpu:      {m.cpu_vendor} {m.cpu_model} ({m.cpu_count} CPUs usable)",
        f"flags:    {' '.join(flags) or 'none of ' + ', '.join(REPORTED_FLAGS[:3]) + ', ...'}",
        f"paddle:   {m.paddle_version or 'not installed'} (PIR {'on' if m.pir else 'off'}, "
        f"{'CUDA' if m.cuda_build else 'CPU-only'} build{' with TensorRT' if m.tensorrt else ''}, oneDNN {'yes' if m.onednn else 'no'}, "
        f"math library {m.math_library})",
        f"gpus:     {gpus}",
        "extras:   " + ", ".join(f"{module} {m.extra_version(module) or '-'}" for module in EXTRAS),
        "capabilities:",
    ]
    for name, capability in CAPABILITIES.items():
        reason = missing(name) if m.paddle_version else "Paddle is not installed"
        lines.append(f"  {name:<16}{'yes' if reason is None else 'no: ' + reason}")
    return lines
