"""Hostile and mistaken labels, with real files: packed and official token labels with bad class
indices or scores, label maps of another grid, one oversized official label, list files with bad
labels, BOM/CRLF, paths outside DATA, a class count resting on one typo, and token labels made by
another teacher. Each case asserts one clear error naming the file (and line or row) before any
training, or the right behaviour, and that nothing outside the run's folder changed."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppim.training.token_labels.formats import PackedLabels, read_official_label, write_official_label
from shapes import write_dataset
from test_hostile_runs import LOCK_NAME, cli, snapshot

KWARGS = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "stem_dim": 8, "patch_size": 8, "img_size": 32}'
TRAIN = ["--model", "lvvit_s", "--model-kwargs", KWARGS, "-b", "4", "-j", "0", "--epochs", "1",
         "--warmup-epochs", "0", "--cooldown-epochs", "0", "--no-progress", "--aa", "none"]
TOKEN = ["--token-label", "--token-label-size", "4"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """DATA (3 classes, 4 train images each, 32 px) and packed token labels of a tiny teacher (4 x 4 maps)."""
    from ppim.cli.make_token_labels import main

    root = tmp_path_factory.mktemp("hostile_labels")
    data = write_dataset(root / "data", train_per_class=4, val_per_class=1, classes=3, size=32)
    assert main([str(data / "train"), "--teacher", "lvvit_t", "--model-kwargs", KWARGS.replace("}", ', "num_classes": 3}'),
                 "--output", str(root / "packed"), "--no-progress", "-j", "0"]) == 0
    return root


def copy_labels(labelled, tmp_path):
    shutil.copytree(labelled / "packed", tmp_path / "labels")
    return tmp_path / "labels"


def train_refused(capsys, tmp_path, data, extra):
    from ppim.cli.train import main

    before = snapshot(Path(data).parent, skip=tmp_path / "run")
    status, error = cli(capsys, main, [data, *TRAIN, "--output", tmp_path / "run", *extra])
    assert status == 2
    assert snapshot(Path(data).parent, skip=tmp_path / "run") == before
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != LOCK_NAME]
    return error


# ----------------------------------------------------------------------------------------------
# Token labels
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, where", [(-1, 1), (1.5, 1), (np.nan, 1), (-2000, 1), (3, 1), (np.inf, 0)])
def test_packed_label_values(labelled, tmp_path, capsys, value, where):
    """A class index of -1 (which Paddle's scatter would wrap), 1.5 (truncated), NaN, -2000, one past
    the classes, or an infinite score: refused before training, naming the part file, row and key."""
    labels = copy_labels(labelled, tmp_path)
    part = next(labels.glob("part-*[0-9].npy"))
    array = np.load(part, mmap_mode="r+")
    array[5, where, 0, 1, 2] = value
    array.flush()
    del array
    error = train_refused(capsys, tmp_path, labelled / "data", [*TOKEN, "--token-label-data", labels])
    assert f"{part} row 5 (" in error and ("class index" if where else "scores") in error, error


def test_official_label_value(labelled, tmp_path, capsys):
    """The official reader applies the same rule (a class index of the model's class count)."""
    from ppim.cli.make_token_labels import main

    assert main(["--convert", str(labelled / "packed"), "--output", str(tmp_path / "official"), "--format",
                 "official", "--no-progress"]) == 0
    bad = sorted((tmp_path / "official").glob("*/*.pt"))[4]
    label = read_official_label(bad)
    label[1, 0, 0, 0] = 3  # the model has 3 classes: 0..2
    write_official_label(bad, label)
    error = train_refused(capsys, tmp_path, labelled / "data",
                          [*TOKEN, "--token-label-data", tmp_path / "official"])
    assert str(bad) in error and "class index 3" in error and "0..2" in error


def test_one_oversized_official_label_is_blamed_itself(labelled, tmp_path, capsys):
    """One 12 x 12 file among 4 x 4 ones (k = 3 classes; the first file): the error names that file, not a normal one."""
    from ppim.cli.make_token_labels import main

    assert main(["--convert", str(labelled / "packed"), "--output", str(tmp_path / "official"), "--format",
                 "official", "--no-progress"]) == 0
    odd = sorted((tmp_path / "official").glob("*/*.pt"))[0]
    write_official_label(odd, np.zeros((2, 3, 12, 12), np.float16))
    error = train_refused(capsys, tmp_path, labelled / "data", [*TOKEN, "--token-label-data", tmp_path / "official",
                                                                "--no-val"])
    assert str(odd) in error and "[2, 3, 12, 12]" in error and "[2, 3, 4, 4]" in error


def test_label_maps_of_another_grid(labelled, tmp_path, capsys):
    """14 x 14 maps for a 4 x 4 token grid are refused (labels of another input size); maps up to
    twice as fine are resized by roi_align, with a note."""
    from ppim.cli.make_token_labels import main

    teacher = KWARGS.replace('"img_size": 32', '"img_size": 112').replace("}", ', "num_classes": 3}')
    assert main([str(labelled / "data" / "train"), "--teacher", "lvvit_t", "--model-kwargs", teacher,
                 "--output", str(tmp_path / "fine"), "--no-progress", "-j", "0"]) == 0
    assert PackedLabels(tmp_path / "fine").shape == (2, 3, 14, 14)
    error = train_refused(capsys, tmp_path, labelled / "data", [*TOKEN, "--token-label-data", tmp_path / "fine"])
    assert "14 x 14" in error and "4 x 4" in error


def test_token_labels_of_another_teacher(labelled, tmp_path, capsys):
    """make_token_labels records its teacher; a rerun with another teacher into the same output is
    refused (no image relabelled, nothing changed) unless --relabel, which labels every image again."""
    from ppim.cli.make_token_labels import main

    labels = copy_labels(labelled, tmp_path)
    before = snapshot(labels)
    other = KWARGS.replace('"depth": 1', '"depth": 2').replace("}", ', "num_classes": 3}')
    argv = [str(labelled / "data" / "train"), "--teacher", "lvvit_t", "--model-kwargs", other, "--output", str(labels),
            "--no-progress", "-j", "0"]
    status, error = cli(capsys, main, argv)
    assert status == 2 and "teacher.json" not in error and "--relabel" in error and "'depth': 1" in error
    assert snapshot(labels) == before
    assert main(argv + ["--relabel"]) == 0
    assert "12 images labelled, 0 already done" in capsys.readouterr().out
    assert '"depth": 2' in (labels / "teacher.json").read_text()
    assert main(argv) == 0  # the same teacher again: nothing to do
    assert "0 images labelled, 12 already done" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# List files
# ----------------------------------------------------------------------------------------------


def list_data(tmp_path, labelled, train_lines, val_lines=None):
    """DATA with train_list.txt / val_list.txt over a copy of the images."""
    data = tmp_path / "data"
    shutil.copytree(labelled / "data", data)
    images = sorted(str(p.relative_to(data)) for p in (data / "train").rglob("*.*"))
    for name, lines in (("train_list.txt", train_lines), ("val_list.txt", val_lines)):
        if lines is None:
            lines = [f"{image} {int(image.split('/')[1][0])}" for image in images]
        text = lines(images) if callable(lines) else lines
        (data / name).write_bytes(text if isinstance(text, bytes) else "\n".join(text).encode() + b"\n")
    return data, images


def good(images):
    return [f"{image} {int(image.split('/')[1][0])}" for image in images]


@pytest.mark.parametrize("label, message", [("-1", "class -1 is outside"), ("1.5", "'1.5' is not a class index"),
                                            ("99999999999999999999", "is not a class index"),
                                            ("nan", "'nan' is not a class index")])
@pytest.mark.parametrize("split", ["train", "val"])
def test_list_labels(labelled, tmp_path, capsys, label, message, split):
    """A train or val list label of -1, 1.5, NaN or 20 digits: one error naming the file and line."""
    def with_bad(images):
        lines = good(images)
        lines[6] = lines[6].rsplit(" ", 1)[0] + " " + label
        return lines

    data, _ = list_data(tmp_path, labelled, with_bad if split == "train" else None,
                        with_bad if split == "val" else None)
    error = train_refused(capsys, tmp_path, data, [])
    assert f"{data / f'{split}_list.txt'}:7: " in error and message in error, error


def test_class_count_resting_on_a_typo(labelled, tmp_path, capsys):
    """Labels 0..2 and one 999: no 1000-class model is built; the error names 999 and its line, and
    --num-classes 1000 states the count (gaps allowed)."""
    def typo(images):
        lines = good(images)
        lines[9] = lines[9].rsplit(" ", 1)[0] + " 999"
        return lines

    data, _ = list_data(tmp_path, labelled, typo, lambda images: good(images)[:6])
    error = train_refused(capsys, tmp_path, data, [])
    assert "999 (line 10)" in error and "--num-classes" in error and "1000 classes" in error
    from ppim.cli.train import main

    assert cli(capsys, main, [data, *TRAIN, "--output", tmp_path / "run2", "--num-classes", "1000"])[0] == 0


def test_list_bom_and_crlf(labelled, tmp_path, capsys):
    """A UTF-8 BOM and CRLF line ends: read as the same list."""
    from ppim.cli.train import main

    data, images = list_data(tmp_path, labelled, lambda images: b"\xef\xbb\xbf" + "\r\n".join(good(images)).encode()
                             + b"\r\n")
    assert cli(capsys, main, [data, *TRAIN, "--output", tmp_path / "run", "--no-val"])[0] == 0


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_list_paths_outside_data(labelled, tmp_path, capsys, kind):
    """A list line naming an image outside DATA (absolute, or ../) is refused naming the line, unless
    --allow-outside-root."""
    from ppim.cli.train import main

    outside = tmp_path / "elsewhere.png"
    shutil.copy(sorted((labelled / "data" / "train").rglob("*.png"))[0], outside)

    def escaping(images):
        lines = good(images)
        lines[2] = f"{outside if kind == 'absolute' else '../elsewhere.png'} 0"
        return lines

    data, _ = list_data(tmp_path, labelled, escaping)
    error = train_refused(capsys, tmp_path, data, [])
    assert "train_list.txt:3: " in error and "outside" in error and "--allow-outside-root" in error
    assert cli(capsys, main, [data, *TRAIN, "--output", tmp_path / "run", "--allow-outside-root"])[0] == 0


def test_eval_list_label_outside_the_model(labelled, tmp_path, capsys):
    """eval -b 0 and a val list naming class 7 of a 3-class model: one error each, nothing scored."""
    from ppim.cli.eval import main

    data, images = list_data(tmp_path, labelled, None, lambda images: good(images)[:3] + [f"{images[3]} 7"])
    status, error = cli(capsys, main, [data, "--model", "lvvit_s", "--model-kwargs",
                                       KWARGS.replace("}", ', "num_classes": 3}')])
    assert status == 2 and "val_list.txt:4: class 7 is outside 0..2" in error
