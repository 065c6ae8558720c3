"""Data: ImageNet class names and the shipped photo sample, image decoding and folder scanning, the
datasets (``datasets``), and the multi-process batch loaders for evaluation and training
(``loaders``)."""
from .datasets import (ASSETS, IMG_EXTENSIONS, SAMPLE_DIR, SAMPLE_LIST, BadImageError, ImageDataset,
                       ImageFolderDataset, ImageListDataset, check_eval_classes, class_folders, eval_root, find_images, imagenet_class_names,
                       imagenet_class_to_idx, imagenet_wnids, load_image, open_dataset, read_val_list,
                       sample_dataset, sample_images, to_rgb)
from .loaders import (Batch, BatchLoader, EvalLoader, TrainLoader, default_workers, sample_seed,
                      shard_indices)

__all__ = ["ASSETS", "IMG_EXTENSIONS", "SAMPLE_DIR", "SAMPLE_LIST", "BadImageError", "ImageDataset",
           "ImageFolderDataset", "ImageListDataset", "check_eval_classes", "class_folders", "eval_root", "find_images", "imagenet_class_names",
           "imagenet_class_to_idx", "imagenet_wnids", "load_image", "open_dataset", "read_val_list",
           "sample_dataset", "sample_images", "to_rgb", "Batch", "BatchLoader", "EvalLoader", "TrainLoader",
           "default_workers", "sample_seed", "shard_indices"]
