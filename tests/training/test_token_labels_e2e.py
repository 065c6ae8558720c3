"""End to end on generated images: make_token_labels with a tiny teacher, two epochs of token-label
training and of SuperViT training (the loss falls), then eval.py --subnets all on the checkpoint."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ppim.cli import eval as eval_cli
from ppim.cli import make_token_labels as labels_cli
from ppim.cli import train as train_cli
from ppim.training.token_labels.formats import open_token_labels, write_official_label
from tiny import tiny_kwargs

TINY = tiny_kwargs()
SUPER = {"img_size": 64, "img_sizes": [32, 48, 64], "embed_dim": 48, "depth": 5, "num_heads": 3}
QUIET = ["-j", "0", "--no-progress", "--warmup-epochs", "0", "--aa", "none", "--reprob", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three classes of 64 px images told apart by colour; 8 train and 2 val images each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.array([200 * (c == 0), 200 * (c == 1), 200 * (c == 2)])
                pixels = (rng.random((56 + 4 * i, 64, 3)) * 50 + base).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return root


def train_losses(output):
    with open(output / "summary.csv") as file:
        return [float(row["train_loss"]) for row in csv.DictReader(file)]


def test_make_labels_train_and_evaluate_every_subnet(data, tmp_path, capsys):
    labels = tmp_path / "labels"
    teacher = ["--teacher", "lvvit_s", "--model-kwargs", json.dumps(TINY), "--num-classes", "3"]
    assert labels_cli.main([str(data / "train"), *teacher, "--output", str(labels), "-b", "8", "-j", "0",
                            "--no-progress"]) == 0
    store = open_token_labels(labels)
    assert store.format == "packed" and len(store) == 24 and store.shape == (2, 3, 4, 4)
    assert labels_cli.main([str(data / "train"), *teacher, "--output", str(labels), "-j", "0",
                            "--no-progress"]) == 0  # resumed: nothing left to do
    assert "0 images labelled, 24 already done" in capsys.readouterr().out
    official = tmp_path / "official"
    assert labels_cli.main(["--convert", str(labels), "--format", "official", "--output", str(official),
                            "--no-progress"]) == 0
    assert len(list(official.glob("class*/*.pt"))) == 24

    common = ["--token-label", "--token-label-size", "4", "-b", "8", "--epochs", "2", "--lr", "2e-3", *QUIET]
    run = tmp_path / "lvvit"
    assert train_cli.main([str(data), "--model", "lvvit_s", "--model-kwargs", json.dumps(TINY),
                           "--token-label-data", str(official), "--output", str(run), *common]) == 0
    losses = train_losses(run)
    assert len(losses) == 2 and losses[1] < losses[0]

    run = tmp_path / "super"
    kwargs = json.dumps(dict(SUPER, stem_dim=8))
    assert train_cli.main([str(data), "--model", "super_lvvit_s", "--model-kwargs", kwargs, "--model-ema",
                           "--token-label-data", str(labels), "--output", str(run), *common]) == 0
    losses = train_losses(run)
    assert len(losses) == 2 and losses[1] < losses[0]

    results = tmp_path / "results.json"
    assert eval_cli.main([str(data / "val"), "--model", "super_lvvit_s", "--model-kwargs",
                          json.dumps(dict(SUPER, stem_dim=8, num_classes=3)), "--checkpoint",
                          str(run / "best.pdparams"), "--subnets", "all", "-j", "0", "--results-file",
                          str(results)]) == 0
    report = json.loads(results.read_text())
    assert report["num_images"] == 6
    assert {(s["img_size"], s["keep_ratio"]) for s in report["subnets"]} == {
        (s, r) for s in (32, 48, 64) for r in (0.5, 0.7, 1.0)}


def test_super_deit_trains_with_its_recipe(data, tmp_path):
    run = tmp_path / "deit"
    assert train_cli.main([str(data), "--model", "super_deit_s", "--model-kwargs", json.dumps(SUPER),
                           "-b", "8", "--epochs", "2", "--lr", "2e-3", "--mixup", "0", "--cutmix", "0",
                           "--output", str(run), *QUIET]) == 0
    losses = train_losses(run)
    assert len(losses) == 2 and losses[1] < losses[0]


def test_token_label_flags_refuse_what_cannot_work(data, tmp_path, capsys):
    base = [str(data), "--epochs", "1", "-b", "8", "--output", str(tmp_path / "run"), *QUIET]
    assert train_cli.main([*base, "--model", "super_deit_s", "--model-kwargs", json.dumps(SUPER),
                           "--token-label"]) == 2
    assert "has none; use an LV-ViT model" in capsys.readouterr().err
    assert train_cli.main([*base, "--model", "lvvit_s", "--model-kwargs", json.dumps(TINY), "--token-label",
                           "--token-label-data", str(tmp_path / "nowhere"), "--token-label-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --token-label-data") and "no such token-label folder" in err
    assert err.count("\n") == 1
    labels = tmp_path / "labels"  # official labels with one image's file missing: found when it is read
    for path in sorted((data / "train").glob("*/*"))[1:]:
        write_official_label(labels / path.parent.name / f"{path.name.split('.')[0]}.pt",
                             np.zeros((2, 3, 4, 4), np.float16))
    assert train_cli.main([*base, "--model", "lvvit_s", "--model-kwargs", json.dumps(TINY), "--token-label",
                           "--token-label-data", str(labels)]) == 2
    assert "pass --token-label-size 4" in capsys.readouterr().err
    assert train_cli.main([*base, "--model", "lvvit_s", "--model-kwargs", json.dumps(TINY), "--token-label",
                           "--token-label-data", str(labels), "--token-label-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no token label for image" in err and err.count("\n") == 1
