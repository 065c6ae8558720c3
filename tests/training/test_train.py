"""Training end to end: exact resume, data parallel on two processes, a kill while a checkpoint is
written, a learnable task through tools/train.py, and the errors raised before anything trains."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ppim
from ppim.weights import read_weights
from ppim.training.checkpoint import load_checkpoint
from ppim.training.run import TrainConfig, build_trainer, train
from shapes import write_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY_LVVIT = dict(depth=2, embed_dim=32, num_heads=2, stem_dim=8, patch_size=8)
# No BatchNorm (which would see per-process batches): the data-parallel test's model.
TINY_DEIT = dict(depth=10, embed_dim=32, num_heads=2, img_sizes=[16, 32], patch_size=8)


def config(data, output, **overrides):
    values = dict(data=str(data), model="lvvit_s", output=str(output), model_kwargs=TINY_LVVIT, img_size=32,
                  batch_size=8, workers=0, epochs=3, warmup_epochs=1, cooldown_epochs=0, lr=2e-3, min_lr=1e-4,
                  progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def rows(output):
    with open(Path(output) / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def run(command, cwd, env=None, timeout=300):
    # Without the launcher variables an in-process test may have left behind (they would make
    # paddle.distributed.launch join another job's layout).
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PADDLE_", "FLAGS_selected_", "POD_", "TRAINER")) and k != "CUDA_VISIBLE_DEVICES"}
    env = dict(inherited, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_states_equal(a, b, rtol=0.0, atol=0.0):
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):
            assert_states_equal(a[key], b[key], rtol, atol)
        else:
            np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=rtol, atol=atol, err_msg=key)


# ---- exact resume -------------------------------------------------------------------------------

def test_resume_is_exact(tmp_path):
    """3 epochs straight == 1 epoch, then --resume for 2 more: same seed, CPU, with everything random
    switched on (RandAugment, random erasing, Mixup/CutMix, drop path, dropout, EMA, worker processes),
    bit for bit. The resumed process builds its model after another, so Paddle's parameter names
    differ from the checkpoint's (the optimizer state is keyed by parameter path)."""
    data = write_dataset(tmp_path / "data", train_per_class=6, val_per_class=2, classes=3, size=40)
    common = dict(mixup=0.8, cutmix=1.0, drop_path=0.1, drop=0.1, model_ema=True, model_ema_decay=0.9,
                  workers=2, clip_grad=1.0)
    straight = build_trainer(config(data, tmp_path / "a", **common))
    straight.fit(3)
    first = build_trainer(config(data, tmp_path / "b", **common))
    first.fit(1)  # a run stopped after its first epoch
    assert load_checkpoint(tmp_path / "b" / "last.pdparams")["epoch"] == 1
    resumed = build_trainer(config(data, tmp_path / "b", resume=str(tmp_path / "b" / "last.pdparams"), **common))
    assert resumed.epoch == 1
    resumed.fit(3)
    a, b = load_checkpoint(tmp_path / "a" / "last.pdparams"), load_checkpoint(tmp_path / "b" / "last.pdparams")
    for part in ("model", "model_ema", "optimizer"):
        assert_states_equal(a[part], b[part])
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    assert rows(tmp_path / "a") == [{**r, "images_per_sec": r2["images_per_sec"], "seconds": r2["seconds"]}
                                    for r, r2 in zip(rows(tmp_path / "b"), rows(tmp_path / "a"))]
    assert [r["epoch"] for r in rows(tmp_path / "b")] == ["0", "1", "2"]


# ---- data parallel --------------------------------------------------------------------------------

TRAIN_SCRIPT = """
import sys
from ppim.training.engine import ClassificationStep
from ppim.training.losses import LabelSmoothingCrossEntropy
from ppim.training.run import TrainConfig, train

data, output, batch_size, kwargs = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
config = TrainConfig(data=data, model="super_deit_s", output=output, model_kwargs=kwargs, img_size=32,
                     batch_size=batch_size, workers=1, epochs=1, opt="sgd", lr=0.05, warmup_epochs=0,
                     cooldown_epochs=0, smoothing=0.1, drop_path=0.0, seed=3, progress=False, recipe="none")
# The plain classification step (one forward of the current sub-network, one backward).
train(config, step=ClassificationStep(LabelSmoothingCrossEntropy(0.1)))
"""


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """2 CPU processes (gloo, paddle.DataParallel) with batch 4 each == 1 process with batch 8, after
    one epoch of 3 steps. Each global batch holds the same images with the same augmentations
    (per-sample seeds), the gradients are the mean of the two halves' means, i.e. the mean over the 8
    images, so the only difference is the order of float32 summation (all-reduce, batched matmuls of
    4 vs 8): relative 1e-6 per step, amplified by nothing in plain SGD over 3 steps: atol 1e-5 at
    lr 0.05 on weights of magnitude ~0.02-1. (BatchNorm would see per-process batches, so the model
    has none; Adam's division by small second moments would amplify rounding, so SGD.)"""
    data = write_dataset(tmp_path / "data", train_per_class=8, val_per_class=2, classes=3, size=40)
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    single = run([sys.executable, str(script), str(data), str(tmp_path / "one"), "8", repr(TINY_DEIT)], tmp_path, env)
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "log"), str(script), str(data), str(tmp_path / "two"), "4", repr(TINY_DEIT)]
    proc = run(command, tmp_path, env, timeout=400)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    one = load_checkpoint(tmp_path / "one" / "last.pdparams")
    two = load_checkpoint(tmp_path / "two" / "last.pdparams")
    assert one["global_step"] == two["global_step"] == 3  # 24 images / 8 per global batch
    start = ppim.create_model("super_deit_s", num_classes=3, img_size=32, **TINY_DEIT).state_dict()
    moved = [k for k in one["model"] if not np.allclose(one["model"][k], start[k].numpy())]
    assert len(moved) > 10  # training changed the weights, so equality below means something
    assert_states_equal(one["model"], two["model"], atol=1e-5)
    assert rows(tmp_path / "one")[0]["top1"] == rows(tmp_path / "two")[0]["top1"]  # exact distributed eval


# ---- faults ---------------------------------------------------------------------------------------

TRAIN_ARGS = ["--model", "lvvit_s", "--model-kwargs", json.dumps(TINY_LVVIT), "--img-size", "32", "-b", "8",
              "-j", "0", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--no-progress"]


# ppim-train whose checkpoint writer stops for two minutes halfway through a file.
PAUSING_TRAIN = f"""import sys, time
sys.path.insert(0, {str(ROOT)!r})
import ppim.training.checkpoint as checkpoint

def write_half_then_wait(file, data):
    file.write(data[:len(data) // 2])
    file.flush()
    time.sleep(120)
    file.write(data[len(data) // 2:])

checkpoint.write_bytes = write_half_then_wait
from ppim.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_while_writing_a_checkpoint_keeps_the_last_one(tmp_path):
    """SIGKILL while last.pdparams is being written (the run's checkpoint writer, replaced through its
    seam, pauses halfway through the temp file): the previous last.pdparams still loads, and --resume
    continues from it."""
    data = write_dataset(tmp_path / "data", train_per_class=4, val_per_class=2, classes=2, size=40)
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "tools" / "train.py"), str(data), *TRAIN_ARGS, "--output", str(out)]
    first = run([*command, "--epochs", "1"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "last.pdparams").read_bytes()

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    pausing = [sys.executable, "-c", PAUSING_TRAIN, str(data), *TRAIN_ARGS, "--output", str(out)]
    proc = subprocess.Popen([*pausing, "--epochs", "2", "--resume", str(out / "last.pdparams")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not any(p.stat().st_size > 0 for p in out.glob(".last.pdparams.*.part")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the checkpoint write never started"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert (out / "last.pdparams").read_bytes() == before  # untouched by the half-written one
    assert load_checkpoint(out / "last.pdparams")["epoch"] == 1
    assert read_weights(out / "last.pdparams", ema=None).state  # and it loads as weights

    resumed = run([*command, "--epochs", "2", "--resume", str(out / "last.pdparams")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(out / "last.pdparams")["epoch"] == 2
    assert [r["epoch"] for r in rows(out)] == ["0", "1"]


# ---- a learnable task through the command lines ----------------------------------------------------

def test_cli_learns_shapes_and_eval_reproduces_best(tmp_path):
    """4 classes of coloured shapes (real PNG/JPEG files), a 2-block LV-ViT from scratch, 6 epochs of
    the default recipe (RandAugment, random erasing, label smoothing; EMA on): held-out top-1 well
    above chance (25%), and tools/eval.py on best.pdparams gives the top-1 the run recorded."""
    data = write_dataset(tmp_path / "data", train_per_class=24, val_per_class=10, classes=4, size=48)
    out = tmp_path / "run"
    proc = run([sys.executable, str(ROOT / "tools" / "train.py"), str(data), *TRAIN_ARGS, "--epochs", "6",
                "--lr", "2e-3", "--min-lr", "1e-4", "--warmup-epochs", "1", "--model-ema", "--model-ema-decay",
                "0.9", "-j", "2", "--output", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = rows(out)
    assert [r["epoch"] for r in table] == [str(e) for e in range(6)]
    best = load_checkpoint(out / "best.pdparams")["best"]
    assert best["metric_name"] == "ema_top1"
    assert best["metric"] >= 60.0, table  # chance is 25%
    assert best["metric"] == max(float(r["ema_top1"]) for r in table)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    kwargs = json.dumps(TINY_LVVIT)
    results = tmp_path / "eval.json"
    proc = run([sys.executable, str(ROOT / "tools" / "eval.py"), str(data / "val"), "--model", "lvvit_s",
                "--model-kwargs", kwargs, "--img-size", "32", "--num-classes", "4", "--checkpoint",
                str(out / "best.pdparams"), "-j", "0", "--no-progress", "--results-file", str(results)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(results.read_text())["top1"] == pytest.approx(best["metric"])


# ---- errors before training -----------------------------------------------------------------------

def test_errors_name_the_cause_and_the_fix(tmp_path):
    data = write_dataset(tmp_path / "data", train_per_class=4, val_per_class=1, classes=2, size=40)
    command = [sys.executable, str(ROOT / "tools" / "train.py")]

    def error(*args):
        proc = run([*command, *TRAIN_ARGS, "--epochs", "2", *args], tmp_path)  # later flags win
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, proc.stderr
        return lines[0]

    assert "2 class folders" in error(str(data), "--num-classes", "5", "--output", str(tmp_path / "o"))
    assert "move them into" in error(str(data / "train"), "--output", str(tmp_path / "o"))
    (tmp_path / "noval").mkdir()
    os.rename(data / "train", tmp_path / "noval" / "train")
    message = error(str(tmp_path / "noval"), "--output", str(tmp_path / "o"))
    assert "no val split" in message and "--no-val" in message
    os.rename(tmp_path / "noval" / "train", data / "train")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "--output" in error(str(data), "--output", str(blocker / "sub"))
    assert not list(tmp_path.glob("o/*.pdparams"))  # nothing trained

    # a checkpoint of another model: named, with both values
    build_trainer(config(data, tmp_path / "r", epochs=1, val=False)).fit(1)
    message = error(str(data), "--resume", str(tmp_path / "r" / "last.pdparams"), "--output", str(tmp_path / "o"),
                    "--model-kwargs", json.dumps({**TINY_LVVIT, "depth": 3}))
    assert "another model" in message and "blocks.2" in message
    (tmp_path / "weights.pdparams").write_bytes((tmp_path / "r" / "last.pdparams").read_bytes()[:100])
    assert "weights.pdparams" in error(str(data), "--resume", str(tmp_path / "weights.pdparams"),
                                       "--output", str(tmp_path / "o"))


def test_records_and_checkpoint_contents(tmp_path):
    data = write_dataset(tmp_path / "data", train_per_class=4, val_per_class=2, classes=2, size=40)
    result = train(config(data, tmp_path / "run", epochs=2, model_ema=True))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pdparams")
    assert {"model", "model_ema", "optimizer", "scheduler", "rng", "epoch", "args", "best", "metrics"} <= set(checkpoint)
    assert checkpoint["args"]["model"] == "lvvit_s" and checkpoint["epoch"] == 2
    assert checkpoint["model_name"] == "lvvit_s" and checkpoint["num_classes"] == 2
    import paddle

    loaded = paddle.load(str(tmp_path / "run" / "last.pdparams"))  # paddle.load reads it too
    np.testing.assert_array_equal(loaded["model"]["head.weight"].numpy(), checkpoint["model"]["head.weight"])
    table = rows(tmp_path / "run")
    assert list(table[0]) == ["epoch", "train_loss", "lr", "top1", "top5", "ema_top1", "ema_top5",
                              "images_per_sec", "seconds"]
    assert float(table[0]["lr"]) == pytest.approx(1e-6)  # warm-up start (timm's schedule at epoch 0)
    # then timm's cosine, timed from epoch 0 (no warmup_prefix): min + (peak - min) (1 + cos(pi t / T)) / 2
    assert float(table[1]["lr"]) == pytest.approx(1e-4 + (2e-3 - 1e-4) * (1 + math.cos(math.pi * 1 / 2)) / 2)
    assert result["best"]["epoch"] in (0, 1)
    # best.pdparams holds the weights its metric was measured on (the EMA's here)
    best = load_checkpoint(tmp_path / "run" / "best.pdparams")
    assert best["eval_weights"] == "model_ema"
    weights = read_weights(tmp_path / "run" / "best.pdparams", ema=None).state
    assert_states_equal(weights, best["model_ema"])
    mode = os.stat(tmp_path / "run" / "last.pdparams").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
