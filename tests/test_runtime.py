"""ppim.runtime: the machine read once, simulated profiles (environment variable and context manager,
inherited by child processes), the capability table per profile, the canaries' verdicts (a child
that really dies by a signal), scoped CPU threads, and `python -m ppim env`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppim import runtime
from ppim.errors import CapabilityError, InputError

pytestmark = pytest.mark.smoke  # Paddle 2.6 too: the layer must answer there as well

#: What each simulated profile has (capability -> has it), as the profiles are documented.
EXPECTED = {
    "avx2": {"cpu_bf16": False, "fused_attention": False, "gpu": False, "gpu_fp16": False, "gpu_bf16": False},
    "avx512": {"cpu_bf16": False, "fused_attention": True, "gpu": False, "gpu_fp16": False, "gpu_bf16": False},
    "avx512-bf16-amx": {"cpu_bf16": True, "fused_attention": True, "gpu": False, "gpu_fp16": False,
                        "gpu_bf16": False},
    "gpu": {"cpu_bf16": False, "fused_attention": False, "gpu": True, "gpu_fp16": True, "gpu_bf16": True},
}


@pytest.fixture
def unsimulated(monkeypatch):
    """The machine running the tests, also when the whole suite runs under PPIM_SIMULATE_MACHINE."""
    monkeypatch.delenv(runtime.SIMULATE_ENV, raising=False)


def test_real_machine_is_read_once_from_the_cpu(unsimulated):
    first = runtime.machine()
    assert first is runtime.machine() and first.profile is None
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        text = f.read()
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert first.cpu_flags == frozenset(flags)
    assert first.has_flag("avx512f") == ("avx512f" in flags)
    assert runtime.has("cpu_bf16") == bool({"avx512_bf16", "amx_bf16"} & set(flags))
    import paddle

    assert first.paddle_version == paddle.__version__ and first.cuda_build == paddle.is_compiled_with_cuda()


@pytest.mark.parametrize("profile", list(EXPECTED))
def test_profiles_answer_every_check(profile, unsimulated):
    pir = runtime.machine().pir
    with runtime.simulate(profile) as m:
        assert runtime.machine() is m and m.profile == profile and os.environ[runtime.SIMULATE_ENV] == profile
        for name, expected in EXPECTED[profile].items():
            if name == "fused_attention":
                expected = expected and pir  # the op is Paddle 3.x's
            assert runtime.has(name) == expected, name
        assert runtime.default_device() == ("gpu" if profile == "gpu" else "cpu")
        if profile != "gpu":
            with pytest.raises(CapabilityError, match="device='gpu' needs a CUDA build.*CPU-only build"):
                runtime.require("gpu", "device='gpu'")
    assert runtime.machine().profile is None and runtime.SIMULATE_ENV not in os.environ


def test_simulated_extras_and_bad_names(unsimulated):
    with runtime.simulate("avx2", extras=("openvino", "paddle2onnx")):
        assert runtime.extra_installed("openvino") and not runtime.extra_installed("onnxruntime")
    with runtime.simulate("avx2", extras=()):
        assert not any(runtime.extra_installed(module) for module in runtime.EXTRAS)
    with pytest.raises(InputError, match="no such machine profile; choose one of avx2, avx512"):
        with runtime.simulate("pentium"):
            pass
    assert runtime.SIMULATE_ENV not in os.environ


def test_child_processes_inherit_the_simulated_machine():
    code = "from ppim import runtime; print(runtime.machine().profile, runtime.has('cpu_bf16'))"
    with runtime.simulate("avx512-bf16-amx"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["avx512-bf16-amx", "True"]


def test_canary_verdicts_from_a_child_killed_by_a_signal(tmp_path, unsimulated):
    marker = tmp_path / "runs.txt"
    deadly = runtime.Canary(f"test-sigill-{os.getpid()}", f"""
import os, signal
open({str(marker)!r}, "a").write("ran\\n")
os.kill(os.getpid(), signal.SIGILL)
""")
    reason = runtime.canary_verdict(deadly)
    assert reason is not None and "killed by SIGILL" in reason
    assert runtime.canary_verdict(deadly) == reason  # kept in this process: not run again
    home = Path(os.environ["PPIM_HOME"])
    saved = list((home / "runtime").glob(f"canary-{deadly.name}-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["ok"] is False
    runtime._VERDICTS.clear()  # a new process: the verdict file answers, the child is not run again
    assert runtime.canary_verdict(deadly) == reason
    assert marker.read_text() == "ran\n"

    failing = runtime.Canary(f"test-raise-{os.getpid()}", "raise SystemExit('no such kernel here')")
    assert runtime.canary_verdict(failing) == "its test call failed (no such kernel here)"
    fine = runtime.Canary(f"test-ok-{os.getpid()}", "import math; assert math.pi > 3")
    assert runtime.canary_verdict(fine) is None
    slow = runtime.Canary(f"test-slow-{os.getpid()}", "import time; time.sleep(30)", timeout=0.5)
    assert "did not finish" in runtime.canary_verdict(slow)
    assert not list((home / "runtime").glob(f"canary-{slow.name}-*.json"))  # no verdict kept
    with runtime.simulate("avx2"):
        assert runtime.canary_verdict(deadly) is None  # simulated machines run what their flags allow


def test_capabilities_name_what_they_need_and_guard(unsimulated):
    for name, capability in runtime.CAPABILITIES.items():
        assert capability.name == name and capability.needs and capability.guards
    assert runtime.CAPABILITIES["fused_attention"].canary is runtime.FUSED_ATTENTION_CANARY
    if runtime.machine().has_flag("avx512f") and runtime.machine().pir:
        # the real kernel's canary, run for real on a CPU that has what it needs
        assert runtime.canary_verdict(runtime.FUSED_ATTENTION_CANARY) is None


def test_cpu_threads_are_scoped():
    import paddle

    runtime.set_cpu_threads(1)
    with runtime.cpu_threads(2) as inside:
        assert inside == 2 and runtime.current_cpu_threads() == 2
        paddle.matmul(paddle.ones([4, 4]), paddle.ones([4, 4]))
    assert runtime.current_cpu_threads() == 1
    assert runtime.set_cpu_threads(None) == runtime.cpu_count()


def test_unwrap_parallel_and_dist_info():
    import paddle

    layer = paddle.nn.Linear(2, 2)
    assert runtime.unwrap_parallel(layer) is layer
    assert runtime.dist_info() == (0, 1)


def test_env_report(machine):
    from ppim.cli.env import report

    data = report()
    rows = {(r["engine"], r["device"], r["precision"]): r for r in data["engines"]}
    assert data["machine"]["profile"] == machine.profile and data["machine"]["cpu_model"] == machine.cpu_model
    assert rows[("eager", "cpu", "fp32")]["runs"] and rows[("inference", "cpu", "fp32")]["runs"]
    assert "fp16 needs a GPU" in rows[("inference", "cpu", "fp16")]["reason"]
    bf16 = machine.has_flag("avx512_bf16", "amx_bf16")
    assert rows[("inference", "cpu", "bf16")]["runs"] == bf16 == (data["capabilities"]["cpu_bf16"] is None)
    if not bf16:
        assert "avx512_bf16 or amx_bf16" in rows[("inference", "cpu", "bf16")]["reason"]
    assert rows[("inference", "gpu", "fp16")]["runs"] == bool(machine.gpus)
    assert data["auto"]["cpu/fp16"] is None and (data["auto"]["gpu/fp32"] is not None) == bool(machine.gpus)


def test_env_command_prints_the_report():
    env = {**os.environ, runtime.SIMULATE_ENV: "avx2"}
    done = subprocess.run([sys.executable, "-m", "ppim", "env"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and not done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert "machine:  simulated profile avx2" in lines and "flags:    sse4_2 avx avx2 fma f16c" in lines
    assert any(line.startswith("  fused_attention no: ") for line in lines)  # avx512f, or no PIR (Paddle 2.6)
    assert any(line.split()[:4] == ["inference", "cpu", "bf16", "no:"] for line in lines)


def test_main_module_usage():
    done = subprocess.run([sys.executable, "-m", "ppim", "nonsense"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "error: unknown command 'nonsense'"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]  # a zombie has ended


LOADER_CHILD = """
import sys, time
import numpy as np
from ppim.data.loaders import BatchLoader

class Slow:
    def __len__(self):
        return 64
    def __getitem__(self, index):
        time.sleep(0.2)
        return np.zeros((3, 4, 4), dtype=np.float32), 0

loader = iter(BatchLoader(Slow(), batch_size=2, num_workers=2))
next(loader)
import multiprocessing
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_end_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", LOADER_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "orphaned loader workers"
    finally:
        parent.kill()
        parent.wait()


def test_watchdog_ends_a_process_whose_parent_changed():
    # The fallback without PR_SET_PDEATHSIG: a parent pid that is not ours means the parent is gone.
    code = "import os, time; from ppim.runtime import exit_with_parent\nexit_with_parent(os.getppid() + 999999, 0.1)\ntime.sleep(30)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 30
