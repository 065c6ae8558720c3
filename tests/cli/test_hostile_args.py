"""Every command-line value is checked when the arguments are parsed: a bad batch size, worker
count, epoch count, learning rate, size, ratio or class count is one ``error:`` line naming the
flag, exit status 2, no traceback, before anything is read, built or written."""
import importlib

import pytest

BAD = [
    ("eval", ["-b", "0"], "-b/--batch-size"),
    ("eval", ["-j", "-1"], "-j/--workers"),
    ("eval", ["--num-classes", "0"], "--num-classes"),
    ("eval", ["--img-size", "-64"], "--img-size"),
    ("eval", ["--threads", "0"], "--threads"),
    ("predict", ["x.jpg", "--topk", "0"], "--topk"),
    ("export", ["--output", "o", "--keep-ratio", "1.5"], "--keep-ratio"),
    ("export", ["--output", "o", "--img-size", "0"], "--img-size"),
    ("export", ["--output", "o", "--batch-size", "-2"], "--batch-size"),
    ("convert", ["a.pth", "b.pdparams", "--num-classes", "-5"], "--num-classes"),
    ("benchmark", ["-b", "1,0"], "-b/--batch-size"),
    ("benchmark", ["--iters", "0"], "--iters"),
    ("make_token_labels", ["d", "--teacher", "lvvit_t", "--output", "o", "--topk", "0"], "--topk"),
    ("make_token_labels", ["d", "--teacher", "lvvit_t", "--output", "o", "-b", "0"], "-b/--batch-size"),
    ("train", ["d", "-b", "0"], "-b/--batch-size"),
    ("train", ["d", "--epochs", "0"], "--epochs"),
    ("train", ["d", "--lr", "nan"], "--lr"),
    ("train", ["d", "--lr", "-1e-3"], "--lr"),
    ("train", ["d", "--lr", "abc"], "--lr"),
    ("train", ["d", "--num-classes", "99999999999999999999"], "--num-classes"),
    ("train", ["d", "--img-size", "0"], "--img-size"),
    ("train", ["d", "--warmup-epochs", "-1"], "--warmup-epochs"),
    ("train", ["d", "--drop-path", "1.5"], "--drop-path"),
    ("train", ["d", "--reprob", "inf"], "--reprob"),
    ("train", ["d", "--scale", "0.9,0.1"], "--scale"),
    ("train", ["d", "--ratio", "0,1"], "--ratio"),
    ("train", ["d", "--cutmix-minmax", "0.2"], "--cutmix-minmax"),
    ("train", ["d", "--model-ema-decay", "2"], "--model-ema-decay"),
    ("train", ["d", "--token-label-size", "0"], "--token-label-size"),
    ("train", ["d", "-j", "-3"], "-j/--workers"),
]


@pytest.mark.parametrize("tool, argv, flag", BAD, ids=[f"{t}{' '.join(a[-2:])}" for t, a, _ in BAD])
def test_bad_value_is_one_error_at_parse_time(tmp_path, monkeypatch, capsys, tool, argv, flag):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"ppim.cli.{tool}").main
    model = ["--teacher", "lvvit_t"] if tool == "make_token_labels" else ["--model", "lvvit_t"]
    if "--teacher" in argv:
        model = []
    with pytest.raises(SystemExit) as exited:
        main([*argv, *model])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: argument {flag}: expected "), err
    assert list(tmp_path.iterdir()) == []  # nothing created
