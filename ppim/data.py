"""ImageNet class names and the small photo sample shipped with ppim."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

ASSETS = Path(__file__).parent / "assets"
SAMPLE_DIR = ASSETS / "sample"
SAMPLE_LIST = SAMPLE_DIR / "val_list.txt"


@lru_cache(maxsize=None)
def _class_table() -> Tuple[Tuple[str, str], ...]:
    rows = []
    for line in (ASSETS / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines():
        wnid, name = line.split(" ", 1)
        rows.append((wnid, name))
    return tuple(rows)


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, index = class id (e.g. 281 "tabby, tabby cat")."""
    return [name for _, name in _class_table()]


def imagenet_wnids() -> List[str]:
    """The 1000 WordNet ids, sorted, index = class id (e.g. 0 "n01440764")."""
    return [wnid for wnid, _ in _class_table()]


def read_val_list(list_file: Path, root: Path) -> List[Tuple[Path, int]]:
    """Lines "relative/path label" -> [(root / path, label)] (PaddleClas list format)."""
    samples = []
    for number, line in enumerate(Path(list_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            path, label = line.rsplit(maxsplit=1)
            samples.append((Path(root) / path, int(label)))
        except ValueError:
            raise ValueError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}") from None
    return samples


def sample_images() -> List[Tuple[Path, int]]:
    """The photographs shipped in ppim/assets/sample with their true ImageNet class ids."""
    return read_val_list(SAMPLE_LIST, SAMPLE_DIR)
