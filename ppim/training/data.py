"""Training data: the train and val splits of a DATA folder, checked against the model's class count
before anything trains.

Layouts (PaddleClas' and ImageNet's):

* ``DATA/train/<class>/<image>`` and ``DATA/val/<class>/<image>``: sorted train class folders give
  the labels; val's class folders must be among them;
* ``DATA/train_list.txt`` and ``DATA/val_list.txt``: lines "relative/path label", paths relative
  to DATA (a split given as a list file takes precedence over its folder).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..errors import ParameterError
from ..data import ImageDataset, ImageFolderDataset, ImageListDataset, class_folders
from ..data.labels import infer_num_classes


class DataLayoutError(ParameterError):
    """A DATA folder that cannot be trained on as it is; the message names the cause and the fix."""


_LAYOUT = ("expected DATA/train/<class>/<image> and DATA/val/<class>/<image>, or list files "
           "DATA/train_list.txt and DATA/val_list.txt of 'relative/path label' lines (PaddleClas)")


def _open_split(root: Path, split: str, transforms: Optional[Callable], class_to_idx=None,
                num_classes: Optional[int] = None, allow_outside_root: bool = False) -> Optional[ImageDataset]:
    list_file = root / f"{split}_list.txt"
    if list_file.is_file():
        return ImageListDataset(root, list_file, transforms, num_classes, allow_outside_root)
    folder = root / split
    if folder.is_dir():
        try:
            return ImageFolderDataset(folder, transforms, class_to_idx=class_to_idx)
        except (FileNotFoundError, ValueError) as error:
            raise DataLayoutError(f"{error} ({_LAYOUT})") from None
    return None


def open_train_val(data: "str | os.PathLike[str]", train_transforms: Optional[Callable] = None,
                   val_transforms: Optional[Callable] = None, *, num_classes: Optional[int] = None,
                   val: bool = True, allow_outside_root: bool = False
                   ) -> Tuple[ImageDataset, Optional[ImageDataset], int]:
    """(train dataset, val dataset or None when ``val=False``, number of classes). ``num_classes``:
    the model's, checked against the data (default: the data's: the class folders, or a list's labels
    0 .. max when none is missing, see ppim.data.labels.infer_num_classes). Raises DataLayoutError
    naming the problem and the fix: no such folder, no train split, no val split, a val class train
    does not have, or a class count that disagrees with ``num_classes``; list files: LabelError /
    InputError naming the file and line (labels outside the classes, paths outside DATA unless
    ``allow_outside_root``)."""
    root = Path(data)
    if not root.is_dir():
        raise DataLayoutError(f"{root}: no such folder ({_LAYOUT})")
    train = _open_split(root, "train", train_transforms, num_classes=num_classes,
                        allow_outside_root=allow_outside_root)
    if train is None:
        found = class_folders(root)
        hint = (f"; it holds the folders {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}: if these are "
                f"the classes, move them into {root / 'train'} and put held-out images in {root / 'val'}"
                if found else "")
        raise DataLayoutError(f"{root} has no train split ({_LAYOUT}){hint}")
    if isinstance(train, ImageFolderDataset):
        data_classes = len(train.classes)
        if num_classes is not None and num_classes != data_classes:
            raise DataLayoutError(f"{root / 'train'} has {data_classes} class folders but the model has "
                                  f"{num_classes} classes: pass {{num_classes:={data_classes}}}", num_classes=None)
    else:  # a list file: its labels were checked against num_classes as it was read
        data_classes = num_classes or infer_num_classes(train.labels, str(train.list_file), train.lines)
    classes = num_classes if num_classes is not None else data_classes
    if not val:
        return train, None, classes
    class_to_idx = train.class_to_idx if isinstance(train, ImageFolderDataset) else None
    val_set = None
    if class_to_idx is not None and (root / "val").is_dir() and not (root / "val_list.txt").is_file():
        extra = [name for name in class_folders(root / "val") if name not in class_to_idx]
        if extra:
            raise DataLayoutError(f"{root / 'val'} has class folders that {root / 'train'} lacks: "
                                  f"{', '.join(extra[:10])}; the splits must share their class folder names")
    val_set = _open_split(root, "val", val_transforms, class_to_idx, classes, allow_outside_root)
    if val_set is None:
        raise DataLayoutError(f"{root} has no val split: add {root / 'val'} (the same class folders as "
                              f"{root / 'train'}, held-out images) or {root / 'val_list.txt'}, or pass "
                              f"{{val:=False}} to train without evaluation", val=None)
    return train, val_set, classes
