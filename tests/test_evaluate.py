"""The accuracy loop against a direct computation (each image alone through the model, ranks with
numpy), on real image files: folder and list layouts, unreadable images, the results file, a super
model's sub-network grid in one pass, and tools/eval.py in one and in two distributed processes."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

import ppim
from ppim.builder import MODEL_KEY, describe_model, set_class_names
from ppim.data import BadImageError, EvalLoader, ImageFolderDataset, ImageListDataset
from ppim.evaluate import evaluate, parse_subnets, subnet_table, topk_correct, write_results
from ppim.transforms import create_transforms
from model_utils import randomize
from tiny import TINY_SUPER, tiny_kwargs

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_kwargs(num_classes=8)
MODES = ["RGB", "L", "RGBA", "P", "CMYK", "RGB", "L", "RGBA", "P"]


def named(model):
    """The model knows its classes (class_0, ...), so a folder of some of them is labelled by name."""
    set_class_names(model, [f"class_{i}" for i in range(model.num_classes)])
    return model


def tiny_model(seed=0):
    return named(randomize(ppim.create_model("lvvit_s", **TINY), seed))


def tiny_super(seed=0):
    model = ppim.create_model("super_lvvit_s", **TINY_SUPER, stem_dim=8, num_classes=6)
    return named(randomize(model, seed))


def write_image(path, mode, seed, size):
    """A real JPEG/PNG file (PNG for modes JPEG cannot hold) of a smooth random photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = (rng.random((h // 6 + 1, w // 6 + 1, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    if mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=100)
    else:
        image = image.convert(mode)
    path = Path(path).with_suffix(".png" if mode in ("RGBA", "P") else ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_folder(root, n=7, classes=4, size=(83, 71), corrupt=()):
    """n images over `classes` class folders (odd counts per class), mixed modes; indices in
    `corrupt` get a broken file. Returns [(path, label)] in sorted order."""
    samples = []
    for i in range(n):
        label = i % classes
        stem = Path(root) / f"class_{label}" / f"img_{i:02d}"
        if i in corrupt:
            path = stem.with_suffix(".jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff\xe0 broken")
        else:
            path = write_image(stem, MODES[i % len(MODES)], seed=i, size=(size[0] + 7 * i, size[1] + 3 * i))
        samples.append((path, label))
    return sorted(samples)


def read_rgb(path):
    with Image.open(path) as image:
        return image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")


def direct(model, samples, subnet=None):
    """(correct1, correct5, n): each image alone through the model, the label's rank by numpy."""
    transforms = create_transforms(model.pretrained_cfg)
    c1 = c5 = 0
    with paddle.no_grad():
        for path, label in samples:
            x = transforms(read_rgb(path)).unsqueeze(0)  # ppim 1.x usage: a paddle.Tensor
            logits = (model(x) if subnet is None else model(x, img_size=subnet[0], keep_ratio=subnet[1])).numpy()[0]
            others = np.delete(logits, label)
            assert np.abs(others - logits[label]).min() > 1e-4, "near tie: pick another seed"
            rank = int((others > logits[label]).sum())
            c1 += rank < 1
            c5 += rank < 5
    return c1, c5, len(samples)


def counts(results):
    return results["correct1"], results["correct5"], results["num_images"]


# ---- counting -----------------------------------------------------------------------------------

def test_topk_correct_is_a_stable_descending_sort(rng):
    logits = rng.integers(0, 4, size=(300, 7)).astype(np.float32)  # many ties
    labels = rng.integers(0, 7, size=300)
    order = np.argsort(-logits, axis=1, kind="stable")
    rank = np.argmax(order == labels[:, None], axis=1)
    for ks in [(1, 5), (1, 2, 3, 7)]:
        assert topk_correct(logits, labels, ks) == tuple(int((rank < k).sum()) for k in ks)
    assert topk_correct(logits, labels, (1,))[0] == int((logits.argmax(1) == labels).sum())
    nan = np.array([[np.nan, 0.0, 1.0]], dtype=np.float32)
    assert topk_correct(nan, np.array([0]), (1, 2, 3)) == (0, 0, 1)  # NaN ranks last
    with pytest.raises(ValueError, match="label 9 is outside the model's 7 classes"):
        topk_correct(logits[:2], np.array([1, 9]))
    assert topk_correct(np.zeros((0, 7)), np.zeros(0, dtype=int)) == (0, 0)


# ---- the library function ---------------------------------------------------------------------

@pytest.mark.smoke
@pytest.mark.parametrize("workers,batch", [(0, 3), (2, 2)])
def test_folder_matches_direct_computation(tmp_path, workers, batch):
    samples = make_folder(tmp_path / "val", n=7, classes=4)
    model = tiny_model(seed=1)
    results = evaluate(model, tmp_path / "val", batch_size=batch, num_workers=workers, progress=False,
                       verbose=False)
    assert counts(results) == direct(model, samples)
    c1, c5, n = counts(results)
    assert results["top1"] == 100.0 * c1 / n and results["top5"] == 100.0 * c5 / n
    assert results["images_per_sec"] > 0 and results["skipped"] == 0 and results["world_size"] == 1


def test_list_file_matches_direct_computation(tmp_path):
    samples = make_folder(tmp_path / "imgs", n=7, classes=3)
    relabelled = [(path, (3 * i + 1) % 8) for i, (path, _) in enumerate(samples)]
    lines = [f"{os.path.relpath(path, tmp_path)} {label}" for path, label in relabelled]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    model = tiny_model(seed=2)
    results = evaluate(model, tmp_path, val_list=str(tmp_path / "val.txt"), batch_size=4, num_workers=1,
                       progress=False, verbose=False)
    assert counts(results) == direct(model, relabelled)
    assert results["val_list"] == str(tmp_path / "val.txt")
    # a dataset object works the same
    dataset = ImageListDataset(tmp_path, tmp_path / "val.txt")
    again = evaluate(model, dataset, batch_size=64, num_workers=0, progress=False, verbose=False)
    assert counts(again) == counts(results)
    # and a loader over part of it
    dataset.transforms = create_transforms(model.pretrained_cfg)
    part = evaluate(model, EvalLoader(dataset, batch_size=2, num_workers=2, indices=[0, 3, 5]), progress=False,
                    verbose=False)
    assert counts(part) == direct(model, [relabelled[i] for i in (0, 3, 5)])


def test_unreadable_images(tmp_path, capsys):
    samples = make_folder(tmp_path / "val", n=7, classes=3, corrupt=(4,))
    bad = str(samples[[p.name for p, _ in samples].index("img_04.jpg")][0])
    model = tiny_model(seed=3)
    with pytest.raises(BadImageError, match="img_04.jpg") as info:
        evaluate(model, tmp_path / "val", batch_size=2, num_workers=2, progress=False, verbose=False)
    assert info.value.path == bad
    results = evaluate(model, tmp_path / "val", batch_size=2, num_workers=2, skip_bad=True, progress=False)
    good = [(p, l) for p, l in samples if str(p) != bad]
    assert counts(results) == direct(model, good) and results["num_images"] == 6
    assert results["skipped"] == 1 and results["skipped_images"][0]["path"] == bad
    out = capsys.readouterr().out
    assert "1 unreadable skipped" in out and bad in out


def test_results_file(tmp_path):
    samples = make_folder(tmp_path / "val", n=5, classes=2)
    model = tiny_model(seed=4)
    checkpoint = tmp_path / "tiny.pdparams"
    paddle.save({**model.state_dict(), MODEL_KEY: describe_model(model)}, str(checkpoint))
    loaded = ppim.create_model(checkpoint_path=str(checkpoint))  # the file says what it holds
    out = tmp_path / "out" / "results.json"
    results = evaluate(loaded, tmp_path / "val", batch_size=2, num_workers=0, pretrained=str(checkpoint),
                       results_file=out, progress=False, verbose=False)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert os.listdir(out.parent) == ["results.json"]  # written through a temp file, renamed
    assert saved["model"] == "lvvit_s" and saved["num_images"] == 5
    assert saved["weights"] == {"path": str(checkpoint.resolve()),
                                "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert (saved["correct1"], saved["correct5"], 5) == direct(model, samples)
    for key, kind in [("top1", float), ("top5", float), ("images_per_sec", float), ("engine", str),
                      ("precision", str), ("end_to_end_images_per_sec", float), ("batch_size", int)]:
        assert isinstance(saved[key], kind), key
    assert saved["engine"] == "eager" and saved["precision"] == "fp32" and "subnets" not in saved
    write_results({"a": np.int64(3)}, out)  # numpy scalars are written as numbers
    assert json.loads(out.read_text()) == {"a": 3}


def test_runner_callable(tmp_path):
    samples = make_folder(tmp_path / "val", n=5, classes=3)
    model = tiny_model(seed=5)

    def runner(images):
        with paddle.no_grad():
            return model(paddle.to_tensor(images)).numpy()

    results = evaluate(runner, tmp_path / "val", transforms=create_transforms(model.pretrained_cfg),
                       name="my-runner", num_workers=0, progress=False, verbose=False)
    assert results["model"] == "my-runner" and counts(results) == direct(model, samples)


# ---- super models -----------------------------------------------------------------------------

class CountingDataset(ImageFolderDataset):
    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


def test_subnets_in_one_pass(tmp_path, capsys):
    samples = make_folder(tmp_path / "val", n=5, classes=3, size=(240, 228))
    model = tiny_super(seed=6)
    dataset = CountingDataset(tmp_path / "val", create_transforms(model.pretrained_cfg))
    results = evaluate(model, dataset, subnets="all", batch_size=2, num_workers=0, progress=False)
    assert CountingDataset.reads == 5  # each image decoded once for the 12 sub-networks
    entries = {(e["img_size"], e["keep_ratio"]): e for e in results["subnets"]}
    assert list(entries) == model.subnets
    for subnet, entry in entries.items():
        assert (entry["correct1"], entry["correct5"], 5) == direct(model, samples, subnet), subnet
        assert entry["top1"] == 100.0 * entry["correct1"] / 5 and entry["images_per_sec"] > 0
    assert results["subnet"] == "224x1.0" and results["top1"] == entries[(224, 1.0)]["top1"]
    assert (model.img_size, model.keep_ratio) == (224, 1.0)  # restored
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines() if line.split() and "x" in line.split()[0]
            and line.split()[0][0].isdigit()]
    assert [r[0] for r in rows[:4]] == ["8x8", "10x10", "12x12", "14x14"]
    assert "0.5" in table and "0.7" in table
    header = next(line for line in table.splitlines() if line.startswith("top-1 (%)"))
    assert header.split()[-3:] == ["0.5", "0.7", "1"]
    top1_rows = rows[:4]
    for (size, ratio), entry in entries.items():
        row = top1_rows[(size - 128) // 32]
        assert float(row[2 + [0.5, 0.7, 1.0].index(ratio)]) == pytest.approx(entry["top1"], abs=0.005)

    # a selection, and the current sub-network by default
    some = evaluate(model, dataset, subnets="128x0.5, 192x1", num_workers=0, progress=False, verbose=False)
    assert [(e["img_size"], e["keep_ratio"]) for e in some["subnets"]] == [(128, 0.5), (192, 1.0)]
    assert some["subnet"] == "192x1.0"  # the largest when the current one is not evaluated
    model.set_subnet(160, 0.7)
    one = evaluate(model, dataset, num_workers=0, progress=False, verbose=False)
    assert [(e["img_size"], e["keep_ratio"]) for e in one["subnets"]] == [(160, 0.7)]
    assert counts(one) == direct(model, samples, (160, 0.7))


def test_parse_subnets_errors():
    model = tiny_super()
    assert parse_subnets("all", model) == model.subnets
    with pytest.raises(ValueError, match="IMG_SIZExKEEP_RATIO"):
        parse_subnets("224-1.0", model)
    with pytest.raises(ValueError, match="img_size 100"):
        parse_subnets("100x0.5", model)
    with pytest.raises(ValueError, match="needs a super model"):
        parse_subnets("all", tiny_model())
    assert "8x8 (128)" in subnet_table([{"img_size": 128, "keep_ratio": 0.5, "top1": 1.0}])


def test_inference_engine(tmp_path):
    """Paddle Inference runners (one exported per sub-network) give the eager counts."""
    samples = make_folder(tmp_path / "val", n=5, classes=3, size=(240, 228))
    model = tiny_super(seed=9)
    results = evaluate(model, tmp_path / "val", engine="inference", subnets="128x0.5,224x1.0", batch_size=2,
                       num_workers=0, workdir=str(tmp_path / "export"), progress=False, verbose=False)
    assert results["engine"] == "inference" and results["precision"] == "fp32"
    for entry in results["subnets"]:
        subnet = (entry["img_size"], entry["keep_ratio"])
        assert (entry["correct1"], entry["correct5"], 5) == direct(model, samples, subnet), subnet
    assert sorted(os.listdir(tmp_path / "export")) == ["128x0.5", "224x1.0"]
    lvvit = tiny_model(seed=10)
    lv_samples = make_folder(tmp_path / "small", n=7, classes=4)
    results = evaluate(lvvit, tmp_path / "small", engine="inference", batch_size=3, num_workers=2,
                       progress=False, verbose=False)
    assert counts(results) == direct(lvvit, lv_samples)


# ---- tools/eval.py ------------------------------------------------------------------------------

def cli(tmp_path, model_seed=7):
    """A tiny checkpoint (weights and the model's description, as ppim writes them) and the
    tools/eval.py arguments that build its architecture (agreeing with the description)."""
    model = tiny_model(seed=model_seed)
    checkpoint = tmp_path / "tiny.pdparams"
    paddle.save({**model.state_dict(), MODEL_KEY: describe_model(model)}, str(checkpoint))
    kwargs = {k: v for k, v in TINY.items() if k not in ("img_size", "num_classes")}
    args = ["--model", "lvvit_s", "--checkpoint", str(checkpoint), "--img-size", "64", "--num-classes", "8",
            "--model-kwargs", json.dumps(kwargs), "--no-progress"]
    return model, args


def run(command, cwd, timeout=120):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli(tmp_path):
    samples = make_folder(tmp_path / "val", n=7, classes=5, corrupt=(3,))
    model, args = cli(tmp_path)
    out = tmp_path / "r.json"
    proc = run([sys.executable, str(ROOT / "tools" / "eval.py"), str(tmp_path / "val"), *args, "-b", "3",
                "-j", "2", "--results-file", str(out)], tmp_path)
    assert proc.returncode == 2 and "img_03.jpg" in proc.stderr and not out.exists()
    proc = run([sys.executable, str(ROOT / "tools" / "eval.py"), str(tmp_path / "val"), *args, "-b", "3",
                "-j", "2", "--skip-bad", "--results-file", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    good = [(p, l) for p, l in samples if p.name != "img_03.jpg"]
    assert counts(results) == direct(model, good)
    assert results["skipped"] == 1 and results["weights"]["sha256"]
    assert "top-1" in proc.stdout and "img_03.jpg" in proc.stdout


@pytest.mark.smoke
def test_cli_distributed_equals_single_process(tmp_path):
    """2 CPU processes (gloo) under paddle.distributed.launch: 9 files, one unreadable, so the
    shards are uneven (5 + 4, the second padded) and the skipped image is on one rank only."""
    samples = make_folder(tmp_path / "val", n=9, classes=4, corrupt=(6,))
    model, args = cli(tmp_path, model_seed=8)
    out = tmp_path / "dist.json"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(tmp_path / "log"), str(ROOT / "tools" / "eval.py"), str(tmp_path / "val"),
               *args, "-b", "2", "-j", "1", "--skip-bad", "--results-file", str(out)]
    proc = run(command, tmp_path, timeout=180)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-3000:]
    results = json.loads(out.read_text())
    good = [(p, l) for p, l in samples if p.name != "img_06.jpg"]
    assert results["world_size"] == 2
    assert counts(results) == direct(model, good)
    single = evaluate(ppim.create_model("lvvit_s", pretrained=str(tmp_path / "tiny.pdparams"), **TINY),
                      tmp_path / "val", batch_size=2, num_workers=0, skip_bad=True, progress=False,
                      verbose=False)
    for key in ("num_images", "correct1", "correct5", "top1", "top5", "skipped", "skipped_images"):
        assert results[key] == single[key], key
    assert "top-1" in logs and logs.count("top-1") == 1  # only rank 0 printed the summary
