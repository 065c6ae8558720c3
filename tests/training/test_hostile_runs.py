"""Hostile and mistaken training runs, with real files and real processes: two runs into one folder
(concurrently and one after the other), a dead run's lock, a resume that would mix two runs' records,
outputs inside the data, hand-edited checkpoints (every field a resume reads), NaN weights in every
tool that reads weights, and plainly invalid constructor arguments. Each case asserts the clear
error (one ``error:`` line, exit 2, no traceback) or the right behaviour, and that nothing outside
the run's folder changed."""
import copy
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ppim.training.checkpoint import load_checkpoint
from ppim.training.run import TrainConfig, train
from ppim.training.run_folder import LOCK_NAME
from shapes import write_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(depth=1, embed_dim=32, num_heads=2, stem_dim=8, patch_size=8)
KWARGS = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "stem_dim": 8, "patch_size": 8}'
TRAIN_FLAGS = ["--model", "lvvit_s", "--model-kwargs", KWARGS, "--img-size", "32", "-b", "4", "-j", "0",
               "--warmup-epochs", "0", "--cooldown-epochs", "0", "--no-progress", "--aa", "none"]


def snapshot(root: Path, skip: "Path | None" = None) -> dict:
    """Every file under ``root`` (but ``skip`` and lock files) -> (size, mtime_ns)."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name != LOCK_NAME and (skip is None or skip not in path.parents):
            info = path.stat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def one_error(result_or_err: str) -> str:
    lines = [line for line in result_or_err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result_or_err, result_or_err
    return errors[0]


def cli(capsys, main, argv):
    """Run a tool's main in this process: (status, the one error line or "")."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return status, (one_error(err) if status == 2 else "")


def spawn(args, env=None, **kwargs):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_selected_"))}
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "train.py"), *map(str, args)],
                            env=dict(inherited, PYTHONWARNINGS="ignore", **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# ppim-train whose checkpoint writer (its seam, training.checkpoint.write_bytes) stops halfway through
# each file until the file named by argv[1] exists: a run that holds its folder as long as a test needs.
WAITING_TRAIN = f"""import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
import ppim.training.checkpoint as checkpoint

def write_half_then_wait(file, data):
    file.write(data[:len(data) // 2])
    file.flush()
    deadline = time.monotonic() + 300
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    file.write(data[len(data) // 2:])

checkpoint.write_bytes = write_half_then_wait
from ppim.cli.train import main
sys.exit(main(sys.argv[2:]))
"""


def spawn_waiting(go: Path, args):
    """A training process that stops in its first checkpoint write until ``go`` exists."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_selected_"))}
    return subprocess.Popen([sys.executable, "-c", WAITING_TRAIN, str(go), *map(str, args)],
                            env=dict(inherited, PYTHONWARNINGS="ignore"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_part(process, out: Path) -> None:
    """Until ``process`` is halfway through writing out/last.pdparams (so it holds the folder)."""
    deadline = time.monotonic() + 240
    while not any(p.stat().st_size > 0 for p in out.glob(".last.pdparams.*.part")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A data folder and a one-epoch run in base/run (last.pdparams, best.pdparams, summary.csv)."""
    root = tmp_path_factory.mktemp("hostile_runs")
    data = write_dataset(root / "data", train_per_class=4, val_per_class=2, classes=3, size=32)
    train(TrainConfig(data=str(data), model="lvvit_s", output=str(root / "run"), model_kwargs=TINY, img_size=32,
                      batch_size=4, workers=0, epochs=1, warmup_epochs=0, cooldown_epochs=0, aa=None,
                      progress=False))
    return root


# ----------------------------------------------------------------------------------------------
# A run owns its folder
# ----------------------------------------------------------------------------------------------


def test_concurrent_runs_into_one_folder(tmp_path, base):
    """Two real ppim-train processes into one --output: the second is refused naming the first's pid
    while the first is writing; the first then finishes with its own records."""
    out, go = tmp_path / "out", tmp_path / "go"
    first = spawn_waiting(go, [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out, "--seed", "1"])
    try:
        wait_for_part(first, out)
        before = snapshot(tmp_path, skip=out)
        second = spawn([base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out, "--seed", "2"])
        _, err = second.communicate(timeout=240)
        assert second.returncode == 2
        assert f"process {first.pid} on " in one_error(err) and "being written by another run" in err
        assert snapshot(tmp_path, skip=out) == before
        assert first.poll() is None  # refused while the first was still running
    finally:
        go.touch()
        _, err_first = first.communicate(timeout=240)
    assert first.returncode == 0, err_first
    assert load_checkpoint(out / "last.pdparams")["args"]["seed"] == 1
    assert (out / "summary.csv").read_text().count("\n") == 2


def test_dead_runs_lock_is_recovered(tmp_path, base):
    """A run killed by SIGKILL while it holds the folder leaves its lock file (naming it); the next
    run takes the folder."""
    out = tmp_path / "out"
    victim = spawn_waiting(tmp_path / "never", [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out])
    wait_for_part(victim, out)
    victim.kill()
    victim.communicate()
    assert f"process {victim.pid} " in (out / LOCK_NAME).read_text()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), base / "data", *TRAIN_FLAGS,
                           "--epochs", "1", "--output", out], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr
    assert (out / "last.pdparams").is_file()


def test_folder_of_another_run(tmp_path, base, capsys):
    """Training into a folder that holds another run is refused (nothing changes) unless --overwrite,
    which replaces that run's records as a whole."""
    from ppim.cli.train import main

    out = tmp_path / "other"
    (out).mkdir()
    for name in ("last.pdparams", "best.pdparams", "summary.csv"):
        (out / name).write_bytes((base / "run" / name).read_bytes())
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    status, error = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out])
    assert status == 2 and "holds another run" in error and "--overwrite" in error
    assert snapshot(tmp_path) == before
    status, _ = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out, "--overwrite",
                                   "--seed", "7", "--no-val"])
    assert status == 0
    assert not (out / "best.pdparams").exists()  # the other run's best is gone, not kept beside ours
    assert load_checkpoint(out / "last.pdparams")["args"]["seed"] == 7
    assert (out / "summary.csv").read_text().count("\n") == 2  # header + this run's epoch
    assert (out / "notes.txt").read_text() == "mine"  # not a run record: never touched


def test_resume_into_a_folder_of_another_run(tmp_path, base, capsys):
    """--resume X/last --output Y: refused when Y holds another run; into a new Y the run continues
    with its own history (summary rows and best.pdparams of X), never Y's."""
    from ppim.cli.train import main

    other = tmp_path / "y"
    other.mkdir()
    (other / "summary.csv").write_text("epoch,train_loss\n0,9.9\n")
    before = snapshot(tmp_path)
    resume = base / "run" / "last.pdparams"
    status, error = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "2", "--resume", resume,
                                       "--output", other])
    assert status == 2 and "holds another run" in error and "would mix" in error
    assert snapshot(tmp_path) == before
    fresh = tmp_path / "z"
    source_before = snapshot(base / "run")
    status, _ = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "2", "--resume", resume, "--output", fresh])
    assert status == 0
    rows = (fresh / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "0", "1"]
    assert rows[1] == (base / "run" / "summary.csv").read_text().splitlines()[1]
    assert (fresh / "best.pdparams").is_file()
    assert snapshot(base / "run") == source_before


@pytest.mark.parametrize("where", ["data", "data/train/0_disc/out"])
def test_output_inside_the_data_is_refused(tmp_path, base, capsys, where):
    from ppim.cli.train import main

    before = snapshot(base)
    status, error = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", base / where])
    assert status == 2 and "inside the data folder" in error
    assert snapshot(base) == before and not (base / where / LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------
# Checkpoints validated as a whole before anything starts
# ----------------------------------------------------------------------------------------------


def _set(path, value):
    def edit(checkpoint):
        *parents, last = path
        node = checkpoint
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value(node[last]) if callable(value) else value
    return edit


def _optimizer_of_another_model(checkpoint):
    checkpoint["optimizer"] = {k.replace("@blocks.0.", "@blocks.7."): v for k, v in checkpoint["optimizer"].items()}


def _model_dtype(dtype):
    def edit(checkpoint):
        checkpoint["model"] = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in checkpoint["model"].items()}
    return edit


def _first_moment(checkpoint):
    return next(k for k in checkpoint["optimizer"] if k.endswith("_moment1_0"))


HOSTILE_FIELDS = {
    "epoch_text": (_set(["epoch"], "abc"), "'epoch'"),
    "epoch_nan": (_set(["epoch"], float("nan")), "'epoch'"),
    "epoch_array": (_set(["epoch"], np.arange(3)), "'epoch'"),
    "epoch_negative": (_set(["epoch"], -5), "'epoch'"),
    "epoch_bool": (_set(["epoch"], True), "'epoch'"),
    "global_step_text": (_set(["global_step"], "many"), "'global_step'"),
    "global_step_negative": (_set(["global_step"], -1), "'global_step'"),
    "best_metric_text": (_set(["best", "metric"], "high"), "'best.metric'"),
    "best_epoch_future": (_set(["best", "epoch"], 99), "'best.epoch'"),
    "optimizer_missing": (_set(["optimizer"], KeyError), "'optimizer'"),
    "optimizer_other_model": (_optimizer_of_another_model, "does not have"),
    "optimizer_nan": (lambda c: c["optimizer"].__setitem__(_first_moment(c), c["optimizer"][_first_moment(c)] * np.nan),
                      "NaN"),
    "optimizer_shape": (lambda c: c["optimizer"].__setitem__(_first_moment(c), np.zeros((2, 3, 4), "float32")),
                        "shape"),
    "optimizer_partial": (lambda c: c["optimizer"].pop(_first_moment(c)), "no state for"),
    "rng_missing": (_set(["rng"], KeyError), "'rng'"),
    "rng_numpy_huge": (_set(["rng", "numpy", 1], np.zeros(1 << 20, np.int64)), "'rng.numpy[1]'"),
    "rng_numpy_nan": (_set(["rng", "numpy", 4], float("nan")), "'rng.numpy[4]'"),
    "rng_numpy_zero": (_set(["rng", "numpy", 1], np.zeros(624, np.int64)), "all zeros"),
    "rng_python_short": (_set(["rng", "python", 1], [1, 2, 3]), "'rng.python[1]'"),
    "rng_paddle_text": (_set(["rng", "paddle"], "seed"), "'rng.paddle'"),
    "scheduler_last_lr_none": (_set(["scheduler", "last_lr"], None), "'scheduler.last_lr'"),
    "weights_text": (_set(["model"], "weights"), "'model'"),
    "weights_entry_list": (_set(["model", "head.weight"], [1.0, 2.0]), "'model.head.weight'"),
    "num_classes_array": (_set(["num_classes"], np.arange(3)), "'num_classes'"),
    "weights_float64": (_model_dtype("float64"), "dtype"),
    "weights_int8": (_model_dtype("int8"), "'model'"),
    "weights_nan": (lambda c: c["model"].__setitem__("head.weight", c["model"]["head.weight"] * np.nan), "NaN"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FIELDS))
def test_hostile_resume_field(tmp_path, base, capsys, case):
    """Each hand-edited field of a real checkpoint: one error naming the field, before any training,
    the run's folder and everything else unchanged."""
    from ppim.cli.train import main

    edit, expected = HOSTILE_FIELDS[case]
    checkpoint = copy.deepcopy(load_checkpoint(base / "run" / "last.pdparams"))
    edit(checkpoint)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pdparams").write_bytes(pickle.dumps(checkpoint, protocol=4))
    before = snapshot(tmp_path)
    status, error = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "3", "--resume", run / "last.pdparams",
                                       "--output", run])
    assert status == 2, case
    assert expected in error and "--resume" in error, error
    assert snapshot(tmp_path) == before


def test_ema_weights_that_do_not_fit(tmp_path, base, capsys):
    from ppim.cli.train import main

    checkpoint = copy.deepcopy(load_checkpoint(base / "run" / "last.pdparams"))
    ema = dict(checkpoint["model"])
    ema["head.weight"] = np.zeros((32, 5), "float32")
    checkpoint["model_ema"] = ema
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pdparams").write_bytes(pickle.dumps(checkpoint, protocol=4))
    status, error = cli(capsys, main, [base / "data", *TRAIN_FLAGS, "--epochs", "3", "--model-ema", "--resume",
                                       run / "last.pdparams", "--output", run])
    assert status == 2 and "'model_ema'" in error and "head.weight" in error


def test_supervit_step_state(tmp_path, capsys):
    """The SuperViT step's own generator state, edited: refused naming step.rng."""
    from ppim.cli.train import main

    data = write_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, classes=2, size=32)
    flags = ["--model", "super_deit_s", "--model-kwargs",
             '{"depth": 10, "embed_dim": 32, "num_heads": 2, "img_sizes": [16, 32], "patch_size": 8}',
             "--img-size", "32", "-b", "4", "-j", "0", "--warmup-epochs", "0", "--cooldown-epochs", "0",
             "--no-progress", "--aa", "none", "--no-val", "--no-repeated-aug", "--model-ema"]
    run = tmp_path / "run"
    assert cli(capsys, main, [data, *flags, "--epochs", "1", "--output", run])[0] == 0
    checkpoint = load_checkpoint(run / "last.pdparams")
    assert checkpoint["step"] is not None
    checkpoint["step"]["rng"] = [3, [7] * 5, None]
    (run / "last.pdparams").write_bytes(pickle.dumps(checkpoint, protocol=4))
    before = snapshot(tmp_path)
    status, error = cli(capsys, main, [data, *flags, "--epochs", "2", "--resume", run / "last.pdparams",
                                       "--output", run])
    assert status == 2 and "'step.rng[1]'" in error
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# NaN weights, refused by every tool that reads weights
# ----------------------------------------------------------------------------------------------

MODEL_KWARGS = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "stem_dim": 8, "patch_size": 8, "img_size": 32, ' \
               '"num_classes": 3}'


@pytest.mark.parametrize("tool", ["eval", "predict", "visualize", "export", "train"])
def test_nan_weights_refused_by_every_tool(tmp_path, base, capsys, tool):
    """A checkpoint whose weights hold NaN (a diverged run) is refused by eval, predict, visualize,
    export and train --checkpoint alike: one error naming the file and the key, nothing scored."""
    import importlib

    checkpoint = load_checkpoint(base / "run" / "last.pdparams")
    checkpoint["model"]["head.weight"] = checkpoint["model"]["head.weight"] * np.nan
    weights = tmp_path / "diverged.pdparams"
    weights.write_bytes(pickle.dumps(checkpoint, protocol=4))
    image = sorted((base / "data" / "val").rglob("*.png"))[0]
    inputs = {"eval": [base / "data" / "val"], "predict": [image], "visualize": [image, "--output", tmp_path / "o"],
              "export": ["--output", tmp_path / "o"],
              "train": [base / "data", "--output", tmp_path / "o", "-j", "0", "--no-progress"]}[tool]
    main = importlib.import_module(f"ppim.cli.{tool}").main
    before = snapshot(base)
    status, error = cli(capsys, main, [*inputs, "--model", "lvvit_s", "--model-kwargs", MODEL_KWARGS,
                                       "--checkpoint", weights])
    assert status == 2 and "NaN" in error and "head.weight" in error and str(weights) in error
    assert snapshot(base) == before
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name != LOCK_NAME]


@pytest.mark.parametrize("kwargs, named", [({"num_classes": -5}, "num_classes=-5"), ({"img_size": -64}, "img_size=-64"),
                                           ({"depth": 0}, "depth=0"), ({"drop_path_rate": 1.5}, "drop_path_rate")])
def test_constructors_refuse_invalid_values(kwargs, named):
    """paddle.hub.load and the constructors refuse plainly invalid sizes and counts, naming them."""
    import paddle

    with pytest.raises(ValueError, match=named):
        paddle.hub.load(str(ROOT), "lvvit_t", source="local", **kwargs)


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------


def _can_mount_tmpfs(tmp_path) -> bool:
    import shutil as _shutil

    probe = tmp_path / "probe"
    probe.mkdir()
    return bool(_shutil.which("unshare")) and subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
        capture_output=True).returncode == 0


def test_full_output_disk_names_the_file(tmp_path, base):
    """An output folder on a full file system (a 100 KB tmpfs in a private mount namespace): one
    error naming the checkpoint that did not fit, no hint about PPIM_HOME (it was not the cache),
    no half-written file left."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("no unprivileged tmpfs mounts here (unshare -rm)")
    out = tmp_path / "small"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=100k tmpfs {out} && {sys.executable} {ROOT / 'tools' / 'train.py'} "
              + " ".join(f"'{a}'" for a in [base / "data", *TRAIN_FLAGS, "--epochs", "1", "--output", out / "run"])
              + f"; echo status=$?; ls -A {out / 'run'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert "status=2" in done.stdout, (done.stdout, done.stderr)
    error = one_error(done.stderr)
    assert f"No space left on device: {out / 'run' / 'last.pdparams'}" in error and "PPIM_HOME" not in error
    assert set(done.stdout.split("status=2")[1].split()) <= {LOCK_NAME}  # no .part file left


def test_full_cache_disk_suggests_ppim_home(tmp_path, monkeypatch):
    """The same error for a file in PPIM_HOME says that PPIM_HOME moves the caches."""
    import errno

    from ppim.cli.common import describe_error

    monkeypatch.setenv("PPIM_HOME", str(tmp_path / "home"))
    inside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "home" / "weights" / "w.pdparams"))
    outside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "last.pdparams"))
    assert "PPIM_HOME moves" in describe_error(inside) and "PPIM_HOME" not in describe_error(outside)
