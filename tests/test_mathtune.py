"""ppim.mathtune: eager CPU math tuned at import, never over the user's setting, same results.

Each case runs in a fresh interpreter: the tuning acts once per process, at import, and depends on
what was imported first and on the environment the process started with."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A tiny LV-ViT's logits and every gradient of a soft-target loss, as JSON.
STEP = """
import json, numpy as np
import ppim, paddle
from ppim import mathtune
paddle.seed(0)
model = ppim.create_model("lvvit_s", num_classes=10, img_size=64, patch_size=8, embed_dim=64, depth=2,
                          num_heads=2, stem_dim=16)
x = paddle.to_tensor(np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype("float32"))
logits = model(x)
loss = paddle.nn.functional.cross_entropy(logits, paddle.arange(8) % 10)
loss.backward()
grads = {name: p.grad.numpy().tolist() for name, p in model.named_parameters() if p.grad is not None}
print(json.dumps({"logits": logits.numpy().tolist(), "grads": grads, "threads": mathtune.paddle_threads(),
                  "report": mathtune.report()}))
"""

PROBE = """
import json, os, sys
{before}
import ppim.models  # loads Paddle and applies the tuning
from ppim import mathtune
print(json.dumps({{"threads": mathtune.paddle_threads(), "report": mathtune.report(),
                  "mkl_dispatch": os.environ.get("MKL_DEBUG_CPU_TYPE")}}))
"""


def _run(code, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PPIM_TUNE_MATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLAGS_paddle_num_threads",
                            "MKL_DEBUG_CPU_TYPE", "PPIM_SIMULATE_MACHINE")}
    environ.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-W", "ignore::UserWarning", "-c", code], capture_output=True, text=True,
                          env=environ, cwd=str(ROOT), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_tuned_forward_and_gradients_equal_untuned_within_fp32_rounding():
    tuned, _ = _run(STEP)
    plain, _ = _run(STEP, PPIM_TUNE_MATH="0")
    assert plain["threads"] == 1 and plain["report"]["applied"] == []
    assert tuned["threads"] == _cpus()
    a, b = np.array(tuned["logits"]), np.array(plain["logits"])
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert tuned["grads"].keys() == plain["grads"].keys() and len(plain["grads"]) > 20
    for name, grad in plain["grads"].items():
        g, h = np.array(tuned["grads"][name]), np.array(grad)
        assert np.abs(g - h).max() <= 1e-4 * max(np.abs(h).max(), 1e-12), name


@pytest.mark.skipif(_cpus() < 2, reason="one CPU: nothing to raise")
def test_threads_raised_from_paddles_default_when_paddle_was_imported_first():
    # (ppim imported first: test_tuned_forward_and_gradients_equal_untuned_within_fp32_rounding)
    out, _ = _run(PROBE.format(before="import paddle"))
    assert out["threads"] == _cpus()
    assert out["report"]["applied"] == [f"eager CPU math threads 1 -> {_cpus()}"]


@pytest.mark.parametrize("before, env, kept", [
    # Paddle writes OMP_NUM_THREADS=1 itself as it loads: the user's own 1 is told apart.
    ("import paddle", {"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS=1 (set by the user)"),
    ("", {"FLAGS_paddle_num_threads": "1"}, "FLAGS_paddle_num_threads=1 (set by the user)"),
    ("import paddle; paddle.base.core.set_num_threads(2)", {}, "threads: 2 (set before ppim loaded)"),
])
def test_a_users_thread_setting_is_kept(before, env, kept):
    out, _ = _run(PROBE.format(before=before), **env)
    # (on an AMD CPU MKL's dispatch is still applied: threads are what the user set here)
    assert [line for line in out["report"]["applied"] if "threads" in line] == [], out["report"]
    assert any(kept in line for line in out["report"]["kept"]), out["report"]
    if env:
        assert out["threads"] == 1


def test_opt_out_changes_nothing():
    out, _ = _run(PROBE.format(before=""), PPIM_TUNE_MATH="0")
    assert out["threads"] == 1 and out["mkl_dispatch"] is None
    assert out["report"] == {"applied": [], "kept": ["PPIM_TUNE_MATH=0: tuning off"]}


@pytest.mark.parametrize("profile, before, env, dispatch, note", [
    ("avx2", "", {}, "5", "applied"),  # AMD (simulated): MKL's AVX2 path, set before Paddle loads
    ("avx2", "", {"MKL_DEBUG_CPU_TYPE": "4"}, "4", "kept"),  # the user's own value wins
    ("avx512", "", {}, None, None),  # Intel: MKL dispatches well by itself
])
def test_mkl_dispatch_on_amd_cpus_set_before_paddle_loads(profile, before, env, dispatch, note):
    code = PROBE.format(before="import sys; import ppim; assert 'paddle' not in sys.modules")
    out, _ = _run(code, PPIM_SIMULATE_MACHINE=profile, **env)
    assert out["mkl_dispatch"] == dispatch
    lines = [line for key in ("applied", "kept") for line in out["report"][key] if "MKL_DEBUG_CPU_TYPE" in line]
    if note is None:
        assert lines == []
    else:
        assert lines and lines[0] in out["report"][note]


def test_paddle_loaded_first_on_amd_is_reported_not_silently_slow():
    out, stderr = _run("import warnings; warnings.simplefilter('always')\n" + PROBE.format(before="import paddle"),
                       PPIM_SIMULATE_MACHINE="avx2")
    assert out["mkl_dispatch"] is None
    assert "MKL_DEBUG_CPU_TYPE not set: Paddle was already loaded" in out["report"]["kept"]
    assert "set MKL_DEBUG_CPU_TYPE=5 in the environment before Python starts" in stderr
