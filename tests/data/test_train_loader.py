"""ppim.data.TrainLoader: per-epoch order, per-rank shards, full batches, seeded random transforms."""
import random

import numpy as np
import pytest

from ppim.data import ImageFolderDataset, TrainLoader, sample_seed
from shapes import write_split


class RandomCrop:
    """A random transform drawing from both global generators the way train transforms do."""

    def __call__(self, image):
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        top, left = random.randint(0, 8), int(np.random.randint(0, 8))
        return array[:, top:top + 32, left:left + 32] + np.float32(np.random.rand())


@pytest.fixture
def dataset(tmp_path):
    write_split(tmp_path / "train", per_class=5, classes=3)  # 15 images
    return ImageFolderDataset(tmp_path / "train", RandomCrop())


def epoch(loader, number):
    loader.set_epoch(number)
    batches = list(loader)
    return np.concatenate([b.indices for b in batches]), np.concatenate([b.images for b in batches])


def test_order_changes_per_epoch_and_batches_are_full(dataset):
    loader = TrainLoader(dataset, batch_size=4, num_workers=0, seed=3)
    assert len(loader) == 3  # 15 images, drop_last
    first, _ = epoch(loader, 0)
    second, _ = epoch(loader, 1)
    assert len(first) == 12 and len(set(first)) == 12
    assert list(first) != list(second)
    assert list(first) == list(epoch(loader, 0)[0])  # an epoch's order is a function of (seed, epoch)
    assert list(first) == np.random.default_rng([3, 0]).permutation(15)[:12].tolist()
    assert len(TrainLoader(dataset, batch_size=4, num_workers=0, drop_last=False)) == 4


def test_random_transforms_do_not_depend_on_workers_and_leave_the_caller_rng_alone(dataset):
    np.random.seed(5)
    random.seed(5)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(5)
    random.seed(5)
    here = epoch(TrainLoader(dataset, batch_size=4, num_workers=0, seed=1), 2)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    workers = epoch(TrainLoader(dataset, batch_size=4, num_workers=2, seed=1), 2)
    np.testing.assert_array_equal(here[0], workers[0])
    np.testing.assert_array_equal(here[1], workers[1])
    other_seed = epoch(TrainLoader(dataset, batch_size=4, num_workers=0, seed=2), 2)
    assert not np.array_equal(here[1], other_seed[1])


def test_ranks_split_each_global_batch(dataset):
    """Step k of 2 ranks with batch 3 holds exactly the images of step k of one process with batch 6,
    augmented the same way."""
    single = TrainLoader(dataset, batch_size=6, num_workers=0, seed=4)
    ranks = [TrainLoader(dataset, batch_size=3, num_workers=0, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for number in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(number)
        for whole, part0, part1 in zip(single, *ranks):
            assert sorted(whole.indices) == sorted([*part0.indices, *part1.indices])
            images = {int(i): img for b in (part0, part1) for i, img in zip(b.indices, b.images)}
            for index, image in zip(whole.indices, whole.images):
                np.testing.assert_array_equal(image, images[int(index)])


def test_uneven_shards_wrap_around(dataset):
    ranks = [TrainLoader(dataset, batch_size=1, num_workers=0, shuffle=False, rank=r, world_size=4)
             for r in range(4)]
    shards = [loader.indices for loader in ranks]
    assert [len(s) for s in shards] == [4, 4, 4, 4]  # 15 padded to 16
    assert sorted(i for s in shards for i in s) == sorted([*range(15), 0])


def test_order_hook_and_errors(dataset):
    loader = TrainLoader(dataset, batch_size=2, num_workers=0, order=lambda e: [e, e, 1, 2])
    loader.set_epoch(5)
    assert [list(b.indices) for b in loader] == [[5, 5], [1, 2]]
    batches = list(loader)  # the repeated index gets two different augmentations
    assert not np.array_equal(batches[0].images[0], batches[0].images[1])
    with pytest.raises(ValueError, match="rank"):
        TrainLoader(dataset, rank=2, world_size=2)
    assert sample_seed(1, 2, 3) != sample_seed(1, 3, 2)
