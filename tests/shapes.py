"""A small learnable image task the training tests write as real files: each class is a shape in its
own colour (disc, square, triangle, bar) at a random place and size on a noisy background."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 180, 60), (50, 80, 220), (230, 200, 30), (180, 60, 200)]
SHAPES = ["disc", "square", "triangle", "bar", "ring"]


def draw(cls: int, rng: np.random.Generator, size: int = 48, any_colour: bool = False) -> Image.Image:
    """Class ``cls``'s shape in its colour, or (``any_colour``: a harder task, the shape alone tells
    the class) in a random one."""
    background = rng.integers(90, 150, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    pen = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2 + 4))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    box = [x0, y0, x0 + extent, y0 + extent]
    colour = tuple(int(v) for v in rng.integers(0, 256, 3)) if any_colour else COLOURS[cls]
    shape = SHAPES[cls]
    if shape == "disc":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent // 2, y0)], fill=colour)
    elif shape == "bar":
        pen.rectangle([x0, y0 + extent // 3, x0 + extent, y0 + 2 * extent // 3], fill=colour)
    else:
        pen.ellipse(box, outline=colour, width=max(2, extent // 6))
    return image


def write_split(root: Path, per_class: int, classes: int = 4, seed: int = 0, size: int = 48, any_colour: bool = False):
    """root/<class>/<i>.png|jpg; returns [(path, label)] in sorted-folder label order."""
    rng = np.random.default_rng(seed)
    samples = []
    for cls in range(classes):
        folder = Path(root) / f"{cls}_{SHAPES[cls]}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg")
            draw(cls, rng, size, any_colour).save(path, **({"quality": 92} if path.suffix == ".jpg" else {}))
            samples.append((path, cls))
    return samples


def write_dataset(root: Path, train_per_class: int = 24, val_per_class: int = 8, classes: int = 4,
                  size: int = 48, any_colour: bool = False) -> Path:
    """DATA/train and DATA/val with different images (different seeds)."""
    write_split(Path(root) / "train", train_per_class, classes, seed=1, size=size, any_colour=any_colour)
    write_split(Path(root) / "val", val_per_class, classes, seed=2, size=size, any_colour=any_colour)
    return Path(root)
