"""Validation datasets and the loader, on real image files written with PIL: folder and list layouts,
every PIL mode to RGB, unreadable files, worker processes vs in-process, distributed shards."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from ppim.cli.common import describe_error

from ppim.data import (IMG_EXTENSIONS, SAMPLE_DIR, BadImageError, EvalLoader, ImageDataset,
                       ImageFolderDataset, ImageListDataset, load_image, open_dataset, sample_dataset,
                       shard_indices, to_rgb)
from ppim.transforms import EvalTransforms


def photo(width, height, seed):
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 8 + 1, width // 8 + 1, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def save(path, mode, seed, size=(90, 75), fmt=None):
    """A real image file of PIL ``mode`` at ``path`` (JPEG, PNG, BMP or WebP by extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = photo(*size, seed)
    if mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=64)
    elif mode == "P+t":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=64)
        image.info["transparency"] = 0
    elif mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)  # mode I;16
    else:
        image = image.convert(mode)
    if mode == "P+t":
        image.save(path, transparency=0)
    else:
        image.save(path, fmt)
    return path


def corrupt(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return path


def truncated(path, seed=0):
    save(path, "RGB", seed, size=(120, 90))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


TRANSFORMS = EvalTransforms(40, 32)


def test_to_rgb_every_mode_and_16_bit_scaling():
    base = photo(20, 16, 0)
    for mode in ["1", "L", "LA", "P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "HSV", "LAB", "I", "F", "La"]:
        image = base.convert("RGBA").convert("La") if mode == "La" else base.convert(mode)
        rgb = to_rgb(image)
        assert rgb.mode == "RGB" and rgb.size == (20, 16), mode
    gray = np.arange(0, 65536, 257, dtype=np.uint16)[:256].reshape(16, 16)
    rgb = np.asarray(to_rgb(Image.fromarray(gray)))  # I;16: PIL itself would clip to white
    np.testing.assert_array_equal(rgb[..., 0], (gray // 257).astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    # palette with transparency: the palette colours, no warning
    p = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb(p)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(p.convert("RGBA").convert("RGB")))


def test_image_folder_layout_modes_extensions(tmp_path):
    root = tmp_path / "val"
    files = {
        "cls_b/a.JPG": "L", "cls_b/b.jpeg": "CMYK", "cls_b/sub/c.png": "RGBA",
        "cls_a/d.PNG": "P", "cls_a/e.bmp": "RGB", "cls_a/f.webp": "RGB", "cls_a/g.png": "I;16",
        "cls_c/h.Jpeg": "RGB", "cls_c/i.png": "P+t",
    }
    for i, (name, mode) in enumerate(files.items()):
        save(str(root / name), mode, seed=i)
    (root / "cls_a" / "notes.txt").write_text("not an image")
    save(str(root / "cls_a" / "._d.PNG"), "RGB", 0)  # macOS resource fork: hidden, skipped
    (root / ".hidden_class").mkdir()
    (root / "cls_empty").mkdir()  # an empty class keeps its index

    dataset = ImageFolderDataset(root, TRANSFORMS)
    assert dataset.classes == ["cls_a", "cls_b", "cls_c", "cls_empty"]
    assert dataset.class_to_idx == {"cls_a": 0, "cls_b": 1, "cls_c": 2, "cls_empty": 3}
    rel = [(os.path.relpath(p, root).replace(os.sep, "/"), label) for p, label in dataset.samples]
    assert rel == [("cls_a/d.PNG", 0), ("cls_a/e.bmp", 0), ("cls_a/f.webp", 0), ("cls_a/g.png", 0),
                   ("cls_b/a.JPG", 1), ("cls_b/b.jpeg", 1), ("cls_b/sub/c.png", 1),
                   ("cls_c/h.Jpeg", 2), ("cls_c/i.png", 2)]
    for index, (path, label) in enumerate(dataset.samples):
        array, got = dataset[index]
        assert got == label and array.shape == (3, 32, 32) and array.dtype == np.float32
        if not path.endswith("g.png"):  # PIL's own conversion for the standard modes
            with Image.open(path) as image:
                expected = TRANSFORMS(image.convert("RGBA").convert("RGB") if image.mode == "P"
                                      else image.convert("RGB"))
            np.testing.assert_array_equal(array, expected)
    assert set(IMG_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ImageFolderDataset(tmp_path / "missing")
    save(str(tmp_path / "flat" / "x.jpg"), "RGB", 0)
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolderDataset(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")


def test_image_list_dataset(tmp_path):
    save(str(tmp_path / "imgs" / "with space.jpg"), "RGB", 1)
    save(str(tmp_path / "imgs" / "b.png"), "LA", 2)
    (tmp_path / "list.txt").write_text("imgs/with space.jpg 3\n\nimgs/b.png 7\n")
    dataset = ImageListDataset(tmp_path, tmp_path / "list.txt", TRANSFORMS)
    assert [label for _, label in dataset.samples] == [3, 7] and len(dataset) == 2
    assert dataset[1][0].shape == (3, 32, 32)
    (tmp_path / "bad.txt").write_text("imgs/b.png 7\nimgs/b.png\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        ImageListDataset(tmp_path, tmp_path / "bad.txt")


def test_open_dataset_rules(tmp_path):
    assert [p for p, _ in open_dataset().samples] == [p for p, _ in sample_dataset().samples]
    assert open_dataset().root == SAMPLE_DIR
    # a list file relative to DATA, and DATA's own val_list.txt
    save(str(tmp_path / "d" / "x" / "a.jpg"), "RGB", 0)
    (tmp_path / "d" / "mylist.txt").write_text("x/a.jpg 4\n")
    assert open_dataset(tmp_path / "d", "mylist.txt").samples[0][1] == 4
    assert open_dataset(None, tmp_path / "d" / "mylist.txt").samples[0][1] == 4
    assert open_dataset(tmp_path / "d").samples[0][1] == 0  # class folder "x"
    (tmp_path / "d" / "val_list.txt").write_text("x/a.jpg 9\n")
    assert open_dataset(tmp_path / "d").samples[0][1] == 9
    # ImageNet WordNet-id folders of a subset get their ImageNet ids for a 1000-class model
    for wnid in ("n01440764", "n02123045"):
        save(str(tmp_path / "sub" / wnid / "a.jpg"), "RGB", 0)
    assert [l for _, l in open_dataset(tmp_path / "sub", num_classes=1000).samples] == [0, 281]
    assert [l for _, l in open_dataset(tmp_path / "sub", num_classes=2).samples] == [0, 1]
    with pytest.raises(FileNotFoundError, match="--val-list"):
        open_dataset(tmp_path, "nope.txt")


def test_unreadable_images_name_their_path(tmp_path):
    bad = corrupt(str(tmp_path / "c" / "bad.jpg"))
    cut = truncated(str(tmp_path / "c" / "cut.jpg"))
    for path in (bad, cut, str(tmp_path / "c" / "missing.jpg")):
        with pytest.raises(BadImageError) as info:
            load_image(path)
        assert path in str(info.value) and info.value.path == path and "skip_bad=True" in str(info.value)
        assert "--skip-bad" in describe_error(info.value)  # the command lines name their flag


def build_mixed(root, n=11, bad=()):
    modes = ["RGB", "L", "RGBA", "P", "CMYK"]
    paths = []
    for i in range(n):
        path = str(root / f"c{i % 3}" / f"{i:02d}.{'png' if modes[i % 5] in ('RGBA', 'P') else 'jpg'}")
        paths.append(corrupt(path) if i in bad else save(path, modes[i % 5], i, size=(50 + i, 45)))
    return paths


@pytest.mark.smoke
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_match_the_dataset(tmp_path, workers):
    build_mixed(tmp_path, 11)
    dataset = ImageFolderDataset(tmp_path, TRANSFORMS)
    expected = np.stack([dataset[i][0] for i in range(len(dataset))])
    for copy in (True, False):
        loader = EvalLoader(dataset, batch_size=4, num_workers=workers, copy=copy)
        assert len(loader) == 3 and loader.num_images == 11
        seen, held = [], []
        for batch in loader:
            assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int64
            assert batch.images.shape[1:] == (3, 32, 32) and batch.counted.all() and not batch.bad
            seen.extend(batch.indices.tolist())
            np.testing.assert_array_equal(batch.images, expected[batch.indices])
            np.testing.assert_array_equal(batch.labels, [dataset.samples[i][1] for i in batch.indices])
            held.append(batch)
        assert seen == list(range(11))
        if copy:  # kept batches stay valid
            np.testing.assert_array_equal(np.concatenate([b.images for b in held]), expected)


@pytest.mark.smoke
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_bad_images(tmp_path, workers):
    paths = build_mixed(tmp_path, 9, bad=(4, 7))
    dataset = ImageListDataset(tmp_path, _write_list(tmp_path, paths))
    dataset.transforms = TRANSFORMS
    with pytest.raises(BadImageError, match=paths[4].replace("\\", "\\\\")):
        list(EvalLoader(dataset, batch_size=3, num_workers=workers))
    batches = list(EvalLoader(dataset, batch_size=3, num_workers=workers, skip_bad=True))
    assert sum(len(b.labels) for b in batches) == 7
    assert [(i, p) for b in batches for i, p, _ in b.bad] == [(4, paths[4]), (7, paths[7])]
    assert [len(b.labels) for b in batches] == [3, 2, 2]
    # every image unreadable: nothing raised, everything reported
    all_bad = ImageListDataset(tmp_path, _write_list(tmp_path, [paths[4], paths[7]], "bad.txt"), TRANSFORMS)
    batches = list(EvalLoader(all_bad, batch_size=1, num_workers=workers, skip_bad=True))
    assert [len(b.bad) for b in batches] == [1, 1] and all(len(b.labels) == 0 for b in batches)


def _write_list(root, paths, name="list.txt"):
    lines = [f"{os.path.relpath(p, root)} {i % 5}" for i, p in enumerate(paths)]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def test_shard_indices():
    for n in (1, 2, 7, 10, 11):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert len({len(ix) for ix, _ in shards}) == 1  # equal lengths: padded
            real = sorted(i for ix, counted in shards for i, c in zip(ix, counted) if c)
            assert real == list(range(n))  # every image exactly once
            for r, (ix, counted) in enumerate(shards):
                assert [i for i, c in zip(ix, counted) if c] == list(range(r, n, world))
                assert all(0 <= i < n for i in ix)
    with pytest.raises(ValueError):
        shard_indices(0, 0, 1)


def test_loader_shard_padding_is_marked(tmp_path):
    build_mixed(tmp_path, 5)
    dataset = ImageFolderDataset(tmp_path, TRANSFORMS)
    indices, counted = shard_indices(len(dataset), 2, 3)  # rank 2 of 3 gets image 2 and one pad
    assert indices == [2, 0] and counted == [True, False]  # the pad wraps to the start
    loader = EvalLoader(dataset, batch_size=8, num_workers=0, indices=indices, counted=counted)
    (batch,) = list(loader)
    assert batch.counted.tolist() == [True, False] and loader.num_images == 1


def test_sample_dataset_is_the_shipped_sample():
    dataset = sample_dataset(TRANSFORMS)
    assert [label for _, label in dataset.samples] == [281, 652, 872, 967]
    assert isinstance(dataset, ImageDataset) and dataset[0][0].shape == (3, 32, 32)
