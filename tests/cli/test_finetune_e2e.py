"""A new user's fine-tune, end to end with real files and real processes: a 3-class folder of PNG and
JPEG images, ppim-train, then eval, predict, export, visualize and resume from the checkpoint alone,
and every mistake a new user makes there getting one error line or the right behaviour."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import interrupt, process_group
from shapes import write_dataset

ROOT = Path(__file__).resolve().parents[2]
KWARGS = json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32})
QUIET = ["-j", "0", "--no-progress"]


def tool(name, *args, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def in_process(capsys, name, *args):
    """One error line from a tool's main run in this process (the errors come before any work: a
    subprocess per case would only add Paddle's start-up)."""
    import importlib

    capsys.readouterr()
    code = importlib.import_module(f"ppim.cli.{name}").main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([name, *args], code, captured.out, captured.err)


def truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """DATA (3 classes) and a 2-epoch fine-tune of a tiny lvvit_t in run/ (trained once per module)."""
    tmp = tmp_path_factory.mktemp("finetune")
    data = write_dataset(tmp / "data", train_per_class=8, val_per_class=4, classes=3, size=40)
    proc = tool("train", data, "--model", "lvvit_t", "--model-kwargs", KWARGS, "-b", "8", "--epochs", "2",
                "--output", tmp / "run", *QUIET, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, data, proc


def best_top1(folder: Path) -> float:
    with open(folder / "summary.csv", newline="") as file:
        return max(float(row["top1"]) for row in csv.DictReader(file))


@pytest.mark.slow
def test_checkpoint_alone_drives_every_tool(run, capsys):
    tmp, data, train = run
    classes = sorted(p.name for p in (data / "train").iterdir())
    # short run: the schedule is scaled, said in one line; no Paddle BatchNorm warning in the output
    output = train.stdout + train.stderr
    assert sum("do not fit 2 epochs" in line for line in output.splitlines()) == 1, output
    assert "UserWarning" not in output and "FatalError" not in output, output
    checkpoint = tmp / "run" / "best.pdparams"

    # eval on DATA (the root): its val split, said so; the run's own number
    proc = tool("eval", data, "--checkpoint", checkpoint, "--results-file", tmp / "r.json", *QUIET, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluating its val split" in proc.stderr
    results = json.loads((tmp / "r.json").read_text())
    assert results["num_images"] == 12 and results["top1"] == pytest.approx(best_top1(tmp / "run"))
    # flags that contradict the checkpoint, and folders that are not a val split of its classes
    error_line(in_process(capsys, "eval", data / "val", "--checkpoint", checkpoint, "--num-classes", "1000"),
               "--num-classes 1000", "3-class")
    error_line(in_process(capsys, "eval", data / "val", "--checkpoint", checkpoint, "--model", "lvvit_s"),
               "--model lvvit_s", "lvvit_t")
    error_line(in_process(capsys, "eval", data / "val" / classes[0], "--checkpoint", checkpoint), "class folder")
    (tmp / "trainonly").mkdir()
    os.symlink(data / "train", tmp / "trainonly" / "train")
    error_line(in_process(capsys, "eval", tmp / "trainonly", "--checkpoint", checkpoint), "no val split")
    (tmp / "other" / "zebra").mkdir(parents=True)
    os.symlink(data / "val" / classes[0], tmp / "other" / classes[0])
    error_line(in_process(capsys, "eval", tmp / "other", "--checkpoint", checkpoint), "zebra")

    # predict prints the class names; an unreadable image is reported and the others classified
    image = sorted((data / "val" / classes[1]).iterdir())[0]
    bad = truncated_jpeg(tmp / "bad.jpg")
    proc = tool("predict", image, bad, "--checkpoint", checkpoint, "--engine", "eager", cwd=tmp)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: cannot read image {bad}: OSError: Truncated File Read"]
    named = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert sorted(named) == classes, proc.stdout

    # export: the manifest describes the model; an output under a file says which part is a file
    proc = tool("export", "--checkpoint", checkpoint, "--output", tmp / "exported", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp / "exported" / "ppim.json").read_text())
    assert manifest["ppim_model"]["class_names"] == classes and manifest["num_classes"] == 3
    (tmp / "a_file").write_text("")
    error_line(in_process(capsys, "export", "--checkpoint", checkpoint, "--output", tmp / "a_file" / "sub"),
               f"{tmp / 'a_file'} is a file")

    # visualize and benchmark build from the checkpoint alone too
    proc = in_process(capsys, "visualize", image, "--checkpoint", checkpoint, "--output", tmp / "pictures")
    assert proc.returncode == 0 and (tmp / "pictures" / "token_classes.png").is_file(), proc.stderr[-3000:]
    proc = in_process(capsys, "benchmark", "--checkpoint", checkpoint, "-b", "1", "--iters", "1", "--warmup", "0",
                      "--engine", "eager", "--no-ceiling")
    assert proc.returncode == 0 and "eager" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_resume_alone_continues_the_run_in_its_folder(run, capsys):
    tmp, data, _ = run
    work = tmp / "elsewhere"  # a different working directory: nothing may land in ./runs/train
    work.mkdir()
    import shutil

    shutil.copytree(tmp / "run", tmp / "resumed")
    proc = tool("train", "--resume", tmp / "resumed" / "last.pdparams", "--epochs", "3", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "changed: epochs 2 -> 3" in proc.stdout + proc.stderr
    with open(tmp / "resumed" / "summary.csv", newline="") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1", "2"]
    assert not list(work.iterdir())  # no ./runs/train
    error_line(in_process(capsys, "train", "--resume", tmp / "resumed" / "last.pdparams"), "already finished epoch 2",
               "--epochs")


@pytest.mark.slow
def test_fine_tune_from_the_checkpoint_and_skip_bad_images(run, capsys):
    tmp, data, _ = run
    other = write_dataset(tmp / "data5", train_per_class=4, val_per_class=2, classes=4, size=40)
    bad = truncated_jpeg(other / "train" / sorted(p.name for p in (other / "train").iterdir())[0] / "zz.jpg")
    # without --skip-bad: one error line naming the flag; the run's folder is not left behind
    error_line(tool("train", other, "--checkpoint", tmp / "run" / "best.pdparams", "-b", "4", "--epochs", "2",
                    "--output", tmp / "ft", *QUIET, cwd=tmp), "zz.jpg", "--skip-bad")
    assert not (tmp / "ft").exists()
    # --checkpoint alone gives the model (its kwargs); a new head for 4 classes, said once; the bad file once
    proc = tool("train", other, "--checkpoint", tmp / "run" / "best.pdparams", "-b", "4", "--epochs", "2",
                "--output", tmp / "ft", "--skip-bad", *QUIET, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count(f"skipped {bad}") == 1 and output.count("a new classifier") == 1, output
    from ppim.builder import checkpoint_description

    assert checkpoint_description(tmp / "ft" / "last.pdparams")["num_classes"] == 4
    # token labels from the fine-tuned teacher (the checkpoint alone), the bad file skipped and reported
    proc = in_process(capsys, "make_token_labels", other / "train", "--checkpoint", tmp / "ft" / "last.pdparams",
                      "--output", tmp / "labels", "--skip-bad", *QUIET)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"skipped {bad}") == 1 and "16 images labelled, 1 unreadable skipped" in proc.stdout, \
        proc.stdout + proc.stderr
    # a run that fails before training leaves no folder
    error_line(in_process(capsys, "train", data, "--model", "lvvit_t", "--model-kwargs", KWARGS, "-b", "999",
                          "--output", tmp / "never" / "run", *QUIET), "-b 999")
    assert not (tmp / "never").exists()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_ctrl_c_in_training_names_the_checkpoint_and_the_resume_command(tmp_path):
    data = write_dataset(tmp_path / "data", train_per_class=120, val_per_class=2, classes=3, size=64)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = [sys.executable, str(ROOT / "tools" / "train.py"), str(data), "--model", "lvvit_t", "--model-kwargs", KWARGS,
               "-b", "8", "--epochs", "100", "-j", "2", "--no-progress", "--output", str(tmp_path / "run")]
    lines = []
    with process_group(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until the first epoch's checkpoint is written
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("epoch 0,") or not line:
                break
        assert (tmp_path / "run" / "last.pdparams").is_file(), "".join(lines)
        rest, _ = interrupt(proc, wait=1.0)  # inside epoch 1, workers busy
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "FatalError" not in output, output[-3000:]
    assert f"continue with: ppim-train --resume {tmp_path / 'run' / 'last.pdparams'}" in output, output[-3000:]
