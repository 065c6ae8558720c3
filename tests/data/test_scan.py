"""Scanning a validation folder ends and counts each image once, whatever links it holds, and
never opens (or waits on) a FIFO, socket or device named like an image."""
import os
import socket

import numpy as np
import pytest
from PIL import Image

from ppim.data import BadImageError, ImageFolderDataset, find_images, load_image, open_dataset
from ppim.errors import InputError


def write_jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((12, 16, 3)) * 255).astype(np.uint8)).save(path)
    return path


def make_val(root, per_class=(2, 3, 1)):
    """Class folders c0, c1, ... with real images (some in a subfolder); returns {class: set(paths)}."""
    files = {}
    for label, count in enumerate(per_class):
        folder = root / f"c{label}"
        files[f"c{label}"] = {str(write_jpeg(folder / ("deep" if i % 2 else "") / f"{i}.jpg", seed=10 * label + i))
                              for i in range(count)}
    return files


def labelled(dataset):
    return sorted((os.path.realpath(path), dataset.classes[label]) for path, label in dataset.samples)


def expected(files):
    return sorted((os.path.realpath(path), name) for name, paths in files.items() for path in paths)


@pytest.mark.timeout(60)
def test_link_loops_end_and_each_image_counts_once(tmp_path):
    root = tmp_path / "val"
    files = make_val(root)
    (root / "c0" / "self").symlink_to(".")                 # a folder that contains itself
    (root / "c0" / "deep" / "again").symlink_to("..")       # a loop through the parent
    (root / "c1" / "loop_a").symlink_to("loop_b")           # a link loop (stat fails: ELOOP), no image name
    (root / "c1" / "loop_b").symlink_to("loop_a")
    (root / "c1" / "dup.jpg").symlink_to(root / "c1" / "0.jpg")  # the same file under two names
    (root / "c2" / "root").symlink_to(root)                 # up to the dataset root: other classes' images
    (root / "c2" / "c0_images").symlink_to(root / "c0")     # another class's folder
    dataset = ImageFolderDataset(root)
    assert dataset.classes == ["c0", "c1", "c2"]
    assert labelled(dataset) == expected(files)  # 6 images, each once, each in its own class


@pytest.mark.timeout(60)
def test_two_self_links_do_not_explode(tmp_path):
    """Two links to their own folder would make os.walk(followlinks=True) branch 2^depth times."""
    folder = tmp_path / "c0"
    paths = {str(write_jpeg(folder / f"{i}.jpg", seed=i)) for i in range(3)}
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    assert set(find_images(folder)) == paths


def test_linked_folders_outside_the_root_are_followed_once(tmp_path):
    """Links are how big data sets are assembled: a class folder linked from elsewhere is read."""
    store = tmp_path / "store"
    images = {str(write_jpeg(store / f"{i}.jpg", seed=i)) for i in range(2)}
    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat" / "batch1").symlink_to(store)
    (tmp_path / "val" / "cat" / "batch1_again").symlink_to(store)
    found = find_images(tmp_path / "val" / "cat")
    assert sorted(map(os.path.realpath, found)) == sorted(images) and len(found) == 2


@pytest.mark.timeout(60)
def test_special_files_named_like_images_are_refused_unopened(tmp_path):
    root = tmp_path / "val"
    make_val(root, (1, 1))
    fifo = root / "c1" / "x.JPEG"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(InputError, match=r"x\.JPEG is a FIFO"):
        ImageFolderDataset(root)
    with pytest.raises(InputError, match="FIFO"):
        open_dataset(root)
    # listed by a list file instead: the loader refuses it without waiting (skip_bad can skip it)
    with pytest.raises(BadImageError, match="FIFO") as info:
        load_image(fifo)
    assert info.value.path == str(fifo)
    with pytest.raises(BadImageError, match="a folder"):
        load_image(root / "c0")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "c0" / "s.png"))
        with pytest.raises(BadImageError, match="socket|No such device"):
            load_image(root / "c0" / "s.png")
    finally:
        server.close()


def test_a_broken_link_is_an_unreadable_image(tmp_path):
    root = tmp_path / "val"
    make_val(root, (1, 1))
    (root / "c0" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    dataset = ImageFolderDataset(root)
    assert len(dataset) == 3
    with pytest.raises(BadImageError, match="gone.jpg: No such file or directory"):
        load_image(root / "c0" / "gone.jpg")
