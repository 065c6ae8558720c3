"""The command lines: expected errors are one ``error:`` line and exit status 2 (no traceback), bugs
keep their traceback, Ctrl-C stops eval and its worker processes, outputs are checked before the
run and never written over the input."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

import ppim
from http_server import LocalServer
from ppim.cli import common
from ppim.data import BadImageError
from ppim.errors import InputError
from processes import interrupt, process_group
from tiny import tiny_kwargs

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_kwargs(embed_dim=32, depth=1, num_heads=2, num_classes=5)
TINY_ARGS = ["--model", "lvvit_s", "--model-kwargs", json.dumps(TINY)]


def tool(name, *args, timeout=180, **popen):
    """Run tools/<name>.py as a user would; returns the CompletedProcess (text)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PPIM_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def assert_one_error_line(proc, *needles, progress=()):
    """Exit status 2, stderr exactly one line starting with error: that names each needle (after
    progress lines starting with one of ``progress``)."""
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(tuple(progress) or "\0")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def write_jpeg(path, seed=0, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pdparams"
    paddle.seed(0)
    paddle.save(ppim.create_model("lvvit_s", **TINY).state_dict(), str(path))
    return path


# ---- the runner, in this process --------------------------------------------------------------


def test_runner_turns_expected_errors_into_one_line(capsys, monkeypatch):
    monkeypatch.delenv("PPIM_DEBUG", raising=False)

    def fails(error):
        @common.command
        def main(argv=None):
            raise error
        return main

    cases = [(BadImageError("x.jpg", "truncated"), "cannot read image x.jpg: truncated"),
             (InputError("line 3 of l.txt\n  is bad"), "line 3 of l.txt; is bad"),  # one line, nothing cut
             (FileNotFoundError(2, "No such file or directory", "/no/such"),
              "No such file or directory: /no/such (check the path)"),
             (PermissionError(13, "Permission denied", "/ro/x"), "Permission denied: /ro/x (check its permissions"),
             (OSError(28, "No space left on device", "/full/x"), "the disk is full"),
             (MemoryError(), "out of memory: use a smaller batch size")]
    for error, expected in cases:
        assert fails(error)([]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
        assert "Traceback" not in err

    @common.command
    def interrupted(argv=None):
        raise KeyboardInterrupt
    assert interrupted([]) == 130 and capsys.readouterr().err == ""


def test_runner_keeps_tracebacks_of_bugs_and_shows_all_with_ppim_debug(capsys, monkeypatch):
    @common.command
    def buggy(argv=None):
        return None.missing  # an AttributeError: a bug, not bad input

    monkeypatch.delenv("PPIM_DEBUG", raising=False)
    with pytest.raises(AttributeError):
        buggy([])

    @common.command
    def expected(argv=None):
        raise InputError("bad --thing")

    monkeypatch.setenv("PPIM_DEBUG", "1")
    assert expected([]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "InputError: bad --thing" in err and err.rstrip().endswith("error: bad --thing")


def test_parser_errors_are_one_line(capsys):
    parser = common.ArgumentParser(prog="ppim-x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'many' (see ppim-x --help)\n"


def test_refuse_same_file_and_writable_file(tmp_path):
    source = tmp_path / "a.pth"
    source.write_bytes(b"x")
    link = tmp_path / "link.pth"
    link.symlink_to(source)
    for output in (source, tmp_path / "." / "a.pth", link, tmp_path):  # the file, another spelling, a link, its folder
        with pytest.raises(InputError, match="would overwrite the input"):
            common.refuse_same_file(source, output)
    common.refuse_same_file(source, tmp_path / "b.pdparams")
    assert common.writable_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # the probe is gone
    with pytest.raises(InputError, match="is a folder"):
        common.writable_file(tmp_path)
    with pytest.raises(InputError, match="cannot be written"):
        common.writable_file(source / "r.json")  # a file where a folder should be


# ---- every tool, as a subprocess -------------------------------------------------------------


@pytest.mark.smoke
def test_predict_expected_errors(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = write_jpeg(tmp_path / "good.jpg")
    missing = tmp_path / "missing.jpg"
    # unreadable images are reported, one error line each; the others are classified; exit 1
    proc = tool("predict", bad, good, missing, *TINY_ARGS, "--checkpoint", tiny_checkpoint)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 2 and "bad.jpg" in errors[0] and "missing.jpg" in errors[1] and "No such file" in errors[1]
    assert "good.jpg" in proc.stdout and "bad.jpg" not in proc.stdout
    # --skip-bad: reported as skipped, exit 0
    proc = tool("predict", bad, good, *TINY_ARGS, "--checkpoint", tiny_checkpoint, "--skip-bad")
    assert proc.returncode == 0 and "good.jpg" in proc.stdout, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "bad.jpg" in line][0].startswith("skipped ")
    proc = tool("predict", good, *TINY_ARGS, "--checkpoint", tiny_checkpoint, "--topk", "2")
    assert proc.returncode == 0 and "good.jpg" in proc.stdout and " 2. " in proc.stdout, proc.stderr


def test_eval_expected_errors_come_before_the_run(tmp_path):
    assert_one_error_line(tool("eval", "--model", "lvvit_ss"), "lvvit_ss", "Did you mean")
    # --results-file that cannot be written: found before any model is built or image read
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = tool("eval", *TINY_ARGS, "--results-file", blocker / "r.json", "--no-progress")
    assert_one_error_line(proc, "--results-file", "r.json", "nothing was run")
    assert proc.stdout == ""
    # a list file that is not UTF-8, named with its line
    write_jpeg(tmp_path / "data" / "a.jpg")
    (tmp_path / "data" / "list.txt").write_bytes(b"a.jpg 1\nb\xe9b\xe9.jpg 2\n")
    assert_one_error_line(tool("eval", tmp_path / "data", "--val-list", "list.txt", *TINY_ARGS), "list.txt:2",
                          "UTF-8")


def test_more_usage_errors_in_process(tmp_path, capsys):
    """The same runner in this process (a subprocess per case would only add Paddle's start-up)."""
    from ppim.cli import benchmark, eval as eval_cli

    def error_line(main, *args):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        return err

    assert "not valid JSON" in error_line(eval_cli.main, "--model", "lvvit_s", "--model-kwargs", "{depth: 2}")
    assert "depht" in error_line(eval_cli.main, "--model", "lvvit_s", "--model-kwargs", '{"depht": 2}')
    assert "nowhere" in error_line(eval_cli.main, tmp_path / "nowhere", *TINY_ARGS)
    for main, args, expected in [(benchmark.main, [*TINY_ARGS, "--engine", "turbo"], "turbo: choose from"),
                                 (eval_cli.main, ["--model", "lvvit_s", "--bogus"], "unrecognized arguments")]:
        with pytest.raises(SystemExit) as exit_info:  # argparse exits itself, with our one line
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err


def test_weights_that_cannot_be_fetched_or_read(tmp_path):
    with LocalServer() as server:
        server.add("/gone.pdparams", status=404)
        assert_one_error_line(tool("export", *TINY_ARGS, "--checkpoint", server.url("/gone.pdparams"),
                                   "--output", tmp_path / "out"), "gone.pdparams", "404",
                              progress=["Downloading "])
    garbage = tmp_path / "garbage.pdparams"
    garbage.write_bytes(b"this is not a weights file")
    assert_one_error_line(tool("eval", *TINY_ARGS, "--checkpoint", garbage), "garbage.pdparams")
    assert not (tmp_path / "out").exists()


def test_convert_and_export_never_write_over_their_input(tmp_path, tiny_checkpoint):
    source = tmp_path / "fine_tune.pth"
    source.write_bytes(b"precious")
    assert_one_error_line(tool("convert", source, source, "--model", "lvvit_s"), "would overwrite the input")
    assert source.read_bytes() == b"precious"
    assert_one_error_line(tool("convert", tmp_path / "none.pth", tmp_path / "o.pdparams", "--model", "lvvit_s"),
                          "none.pth")
    # export into the folder that holds the checkpoint would replace the folder
    folder = tmp_path / "run"
    folder.mkdir()
    checkpoint = folder / "tiny.pdparams"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    assert_one_error_line(tool("export", *TINY_ARGS, "--checkpoint", checkpoint, "--output", folder),
                          "would overwrite the input")
    assert checkpoint.read_bytes() == tiny_checkpoint.read_bytes()


def test_benchmark_usage_errors(tmp_path):
    assert_one_error_line(tool("benchmark", *TINY_ARGS, "--subnets", "224by1"), "224by1", "IMG_SIZExKEEP_RATIO")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = tool("benchmark", *TINY_ARGS, "--json", blocker / "b.json", "--no-ceiling", "-b", "1")
    assert_one_error_line(proc, "--json")
    assert proc.stdout == ""


def test_train_visualize_and_token_labels_expected_errors(tmp_path):
    missing = tmp_path / "missing"
    assert_one_error_line(tool("train", missing, *TINY_ARGS, "--output", tmp_path / "out"), "missing")
    assert_one_error_line(tool("visualize", missing / "x.jpg", *TINY_ARGS, "--output", tmp_path / "vis"),
                          "x.jpg", "No such file")
    proc = tool("make_token_labels", missing, "--teacher", "lvvit_ss", "--output", tmp_path / "labels")
    assert_one_error_line(proc, "lvvit_ss")
    assert not (tmp_path / "vis").exists() and not (tmp_path / "labels").exists()


def test_eval_with_a_fifo_named_like_an_image(tmp_path):
    write_jpeg(tmp_path / "val" / "cat" / "a.jpg")
    fifo = tmp_path / "val" / "cat" / "x.JPEG"
    os.mkfifo(fifo)
    proc = tool("eval", tmp_path / "val", *TINY_ARGS, "-j", "2", timeout=120)
    assert_one_error_line(proc, "x.JPEG", "FIFO")


# ---- Ctrl-C --------------------------------------------------------------------------------


def _children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has not reaped it yet


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_stops_eval_and_its_workers(tmp_path):
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group) while two workers decode:
    eval exits with 130 without a traceback and leaves no worker behind."""
    # A list of 4000 decodes of large photos keeps the workers busy for far longer than the test waits,
    # however fast the machine (a short run could end before the signal).
    for i in range(8):
        write_jpeg(tmp_path / "val" / f"{i}.jpg", seed=i, size=(1600, 1200))
    (tmp_path / "val" / "list.txt").write_text("".join(f"{i % 8}.jpg {i % 5}\n" for i in range(4000)))
    command = [sys.executable, str(ROOT / "tools" / "eval.py"), str(tmp_path / "val"), "--val-list",
               str(tmp_path / "val" / "list.txt"), *TINY_ARGS, "-b", "2", "-j", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with process_group(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 120
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the workers never started"
        _, stderr = interrupt(proc, wait=0.5)  # once they are busy
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "FatalError" not in stderr, stderr[-3000:]  # workers end silently
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "orphaned data-loader workers"


def test_evaluate_checks_the_results_file_before_the_run(tmp_path):
    """The library call too (a notebook loses the run as well): nothing is run."""
    from ppim.evaluate import evaluate
    from ppim.transforms import create_transforms

    calls = []

    def runner(images):
        calls.append(len(images))
        return np.zeros((len(images), 1000), dtype=np.float32)

    blocker = tmp_path / "file"
    blocker.write_text("")
    transforms = create_transforms(ppim.get_model_cfg("lvvit_s"))
    with pytest.raises(NotADirectoryError) as info:
        evaluate(runner, transforms=transforms, name="zeros", num_workers=0, progress=False,
                 results_file=blocker / "r.json")
    assert info.value.filename == str(blocker / "r.json") and calls == []
    results = evaluate(runner, transforms=transforms, name="zeros", num_workers=0, progress=False, verbose=False,
                       results_file=tmp_path / "out" / "r.json")
    assert calls and json.loads((tmp_path / "out" / "r.json").read_text())["num_images"] == results["num_images"]


def test_ema_flags_pick_the_checkpoint_weights(tmp_path):
    """--ema / --no-ema choose between a checkpoint's model and EMA weights; without either, a timm-style
    container gives its model weights (lvvit_s does not prefer the EMA)."""
    def state(seed):
        paddle.seed(seed)
        return {k: v.numpy() for k, v in ppim.create_model("lvvit_s", **TINY).state_dict().items()}

    model_state, ema_state = state(1), state(2)
    path = tmp_path / "train.pdparams"
    paddle.save({"state_dict": model_state, "state_dict_ema": ema_state, "epoch": 3}, str(path))
    parser = common.ArgumentParser()
    common.add_model_arguments(parser)
    for flags, expected in [([], model_state), (["--ema"], ema_state), (["--no-ema"], model_state)]:
        args = parser.parse_args(TINY_ARGS + ["--checkpoint", str(path), *flags])
        model = common.create_model(args, warn=False)
        np.testing.assert_array_equal(model.head.weight.numpy(), expected["head.weight"], err_msg=str(flags))
        assert model.pretrained_info["ema"] == (expected is ema_state)


def test_what_this_machine_cannot_run_is_one_error_line(machine, capsys):
    """eval, predict and benchmark refuse what the (real or simulated) machine cannot run before any
    work, with one error: line that says why and what runs here."""
    from ppim.cli import benchmark, eval as eval_cli, predict
    from ppim.deploy import runs_here

    def error_line(main, *args):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert "what runs here: " in err and "eager on cpu fp32" in err
        return err

    here = runs_here()
    bench = [*TINY_ARGS, "-b", "1", "--iters", "1", "--warmup", "0"]
    for main, args in [(eval_cli.main, [*TINY_ARGS, "--device", "cpu"]), (predict.main, TINY_ARGS),
                       (benchmark.main, bench)]:
        assert "fp16 needs a GPU" in error_line(main, *args, "--engine", "inference", "--precision", "fp16")
        if ("inference", "bf16", "cpu") not in here:
            assert "avx512_bf16 or amx_bf16" in error_line(main, *args, "--engine", "inference", "--precision", "bf16")
        if ("inference", "fp32", "gpu") not in here:
            assert "CPU-only build" in error_line(main, *args, "--engine", "inference", "--device", "gpu")
    assert "eager runs fp32 only on cpu" in error_line(predict.main, *TINY_ARGS, "--engine", "eager", "--precision", "bf16")
    with ppim.runtime.simulate(machine.profile or "avx2", extras=()):  # no extra installed
        assert "pip install 'ppim[openvino]'" in error_line(predict.main, *TINY_ARGS, "--engine", "openvino")
        assert "pip install 'ppim[onnxruntime]'" in error_line(eval_cli.main, *TINY_ARGS, "--engine", "onnxruntime",
                                                               "--device", "cpu")


def test_avx2_machine_runs_every_tool_it_reports(tmp_path, monkeypatch):
    """Under the simulated AVX2-only machine (a child process inherits it) the default engine and
    exports choose layouts every x86-64 CPU with AVX2 runs: predict (auto engine: Paddle Inference
    without extras) and export --verify run and exit 0. (eval --engine inference and the benchmark
    take the same export path: cached_export / attention_layout.)"""
    monkeypatch.setenv(ppim.runtime.SIMULATE_ENV, "avx2:")  # and no optional extra
    for name, args in [("predict", TINY_ARGS), ("export", [*TINY_ARGS, "--output", tmp_path / "out", "--verify"])]:
        proc = tool(name, *args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
    manifest = json.loads((tmp_path / "out" / "ppim.json").read_text())
    assert manifest["deploy_attention"] == "matmul" and manifest["requires"] == []
