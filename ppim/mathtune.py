"""Fast eager CPU math by default, never over a user's own setting.

Eager Paddle (notebooks, fine-tuning, ``model(x)``) starts slower on the CPU than it can run:

* **One math thread.** Paddle starts its MKL/OpenMP math with FLAGS_paddle_num_threads = 1, so
  ``model(x)`` uses one core where torch uses them all. :func:`tune_after_paddle` (run when ppim's
  models load, whatever was imported first) raises it to the CPUs this process may use, divided
  among the processes of a ``paddle.distributed.launch`` on this node.
* **MKL's generic code path on AMD CPUs.** Paddle's CPU wheel ships MKLML, which dispatches on the
  CPU vendor: on AMD it runs its slowest kernels unless ``MKL_DEBUG_CPU_TYPE=5`` (its AVX2 path) is in
  the environment when the library loads, i.e. before ``import paddle``.
  :func:`tune_before_paddle` (run by ``import ppim``) sets it when Paddle is not loaded yet and the
  capability layer says the CPU is AMD. When Paddle was imported first it cannot apply: ppim says
  so once (a warning) and :func:`report` records it.

Nothing is changed that the user set: an environment variable already present (OMP_NUM_THREADS,
MKL_NUM_THREADS, FLAGS_paddle_num_threads, MKL_DEBUG_CPU_TYPE) wins, and a thread count other than
Paddle's start value of 1 (``paddle.base.core.set_num_threads`` called before ppim loaded) is
kept. ``PPIM_TUNE_MATH=0`` turns all of it off. Results equal the untuned ones up to fp32 rounding
(the same kernels, other blocking and summation order; tests/test_mathtune.py).

Measured (benchmarks/eager.py, docs/performance.md): oneDNN kernels for eager ops
(FLAGS_use_mkldnn) are not applied: they were not faster here.

Imports nothing from ppim at module level and no Paddle, so ``import ppim`` can run it first.
"""
from __future__ import annotations

import ctypes
import os
import sys
import warnings
from typing import Dict, List, Optional

__all__ = ["OPT_OUT", "enabled", "tune_before_paddle", "tune_after_paddle", "report", "paddle_threads",
           "machine_summary"]

#: Environment variable that turns the tuning off ("0", "false", "no", "off").
OPT_OUT = "PPIM_TUNE_MATH"
#: MKL's dispatch override: 5 = its AVX2 code path, honoured on any vendor's CPU.
MKL_DISPATCH = ("MKL_DEBUG_CPU_TYPE", "5")
#: A user who set any of these chose the thread count.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLAGS_paddle_num_threads")

_REPORT: Dict[str, List[str]] = {"applied": [], "kept": []}
_DONE = {"before": False, "after": False}
# The thread variables the user set, as seen before Paddle loaded (Paddle writes OMP_NUM_THREADS=1
# into os.environ as it loads, so afterwards its value alone does not say who chose it); None when
# ppim came after Paddle.
_USER_THREADS: List[Optional[Dict[str, str]]] = [None]


def enabled() -> bool:
    """False when ``PPIM_TUNE_MATH`` turns the tuning off."""
    return os.environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_vendor() -> str:
    """The CPU vendor id ('AuthenticAMD', 'GenuineIntel', ...) from the capability layer (simulated
    machines included), without loading Paddle."""
    from .runtime import cpu

    return cpu()[0]


def tune_before_paddle() -> None:
    """On AMD CPUs, MKL_DEBUG_CPU_TYPE=5 while Paddle is not loaded yet (once per process)."""
    if _DONE["before"] or not enabled():
        return
    _DONE["before"] = True
    if "paddle" not in sys.modules:
        _USER_THREADS[0] = {n: os.environ[n] for n in THREAD_VARIABLES if os.environ.get(n)}
    name, value = MKL_DISPATCH
    if _cpu_vendor() != "AuthenticAMD":
        return
    if name in os.environ:
        _REPORT["kept"].append(f"{name}={os.environ[name]} (set by the user)")
    elif "paddle" in sys.modules:
        message = (f"Paddle was imported before ppim on this AMD CPU, so Paddle's MKL runs its generic (slow) "
                   f"code path: set {name}={value} in the environment before Python starts, or import ppim "
                   f"before paddle ({OPT_OUT}=0 silences this)")
        _REPORT["kept"].append(f"{name} not set: Paddle was already loaded")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    else:
        os.environ[name] = value
        _REPORT["applied"].append(f"{name}={value} (MKL's AVX2 kernels on an AMD CPU)")


def _start_environment() -> Dict[str, str]:
    """The environment this process started with (Linux: /proc/self/environ), {} elsewhere."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return {}
    pairs = (entry.decode("utf-8", "replace").partition("=") for entry in entries if b"=" in entry)
    return {name: value for name, _, value in pairs}


def _user_thread_variables() -> Dict[str, str]:
    """The thread variables the user set: as seen before Paddle loaded when ppim was imported first;
    otherwise those in the environment, where OMP_NUM_THREADS=1 counts only if the process started
    with it (Paddle writes that value itself)."""
    if _USER_THREADS[0] is not None:
        return dict(_USER_THREADS[0])
    found = {n: os.environ[n] for n in THREAD_VARIABLES if os.environ.get(n)}
    if found.get("OMP_NUM_THREADS") == "1" and "OMP_NUM_THREADS" not in _start_environment():
        del found["OMP_NUM_THREADS"]
    return found


def _local_processes() -> int:
    """Processes of a paddle.distributed.launch on this node (1 outside one)."""
    for name in ("PADDLE_LOCAL_SIZE", "PADDLE_TRAINERS_NUM"):
        try:
            value = int(os.environ.get(name, "") or 0)
        except ValueError:
            continue
        if value > 0:
            return value
    return 1


def _mkl_library() -> Optional[ctypes.CDLL]:
    """Paddle's bundled MKLML (already loaded with Paddle), or None on a build without it."""
    import paddle

    path = os.path.join(os.path.dirname(paddle.__file__), "libs", "libmklml_intel.so")
    if not os.path.isfile(path):
        return None
    try:
        return ctypes.CDLL(path)  # the loaded copy: same path, same handle
    except OSError:
        return None


def paddle_threads() -> Optional[int]:
    """Paddle's current eager CPU math threads (MKL's max threads), None where it cannot be read."""
    library = _mkl_library()
    if library is None:
        return None
    return int(library.mkl_get_max_threads())


def tune_after_paddle() -> None:
    """Raise Paddle's eager CPU math threads from its start value of 1 to this process's share of the
    CPUs, unless the user set a thread count (once per process; Paddle must be importable)."""
    if _DONE["after"] or not enabled():
        return
    _DONE["after"] = True
    chosen = _user_thread_variables()
    if chosen:
        _REPORT["kept"].append(f"threads: {', '.join(f'{n}={v}' for n, v in chosen.items())} (set by the user)")
        return
    current = paddle_threads()
    if current is None:
        _REPORT["kept"].append("threads: this Paddle has no MKLML to ask")
        return
    if current != 1:
        _REPORT["kept"].append(f"threads: {current} (set before ppim loaded)")
        return
    from .runtime import cpu_count

    threads = max(1, cpu_count() // _local_processes())
    if threads > 1:
        from .runtime import set_cpu_threads

        set_cpu_threads(threads)
        _REPORT["applied"].append(f"eager CPU math threads 1 -> {threads}")


def report() -> Dict[str, List[str]]:
    """What the tuning applied and what it left as the user set it (``python -m ppim env`` shows it)."""
    if not enabled():
        return {"applied": [], "kept": [f"{OPT_OUT}={os.environ.get(OPT_OUT)}: tuning off"]}
    return {key: list(values) for key, values in _REPORT.items()}


def machine_summary() -> str:
    """One line naming the CPU and its instruction sets that decide kernels (capability layer), for
    benchmark tables."""
    from .runtime import REPORTED_FLAGS, cpu, cpu_count

    vendor, model, flags = cpu()
    named = " ".join(flag for flag in REPORTED_FLAGS if flag in flags and flag.startswith(("avx", "amx")))
    return f"{model} ({vendor}, {cpu_count()} CPUs; {named or 'no AVX'})"
