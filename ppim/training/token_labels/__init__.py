"""Token labeling (LV-ViT): label files (official .pt and packed), teacher labels, label-aware data,
targets aligned to the token grid, and the training plug-ins. A module per concern:

- formats: read/write/convert the label layouts (torch-free)   - generate: make labels with a teacher
- dataset: images + labels, augmented together, packed per sample - targets: roi_align'd token targets
- step: target builder, label-map mixup, the training step       - plugin: wiring into the Trainer
"""
from .formats import (TokenLabelError, convert_token_labels, open_label_writer, open_token_labels,
                      read_official_label, write_official_label)
from .generate import make_token_labels, teacher_labels
from .dataset import TokenLabelDataset, TokenLabelTransforms
from .step import TokenLabelMixup, TokenLabelStep, TokenLabelTargets
from .targets import token_label_target

__all__ = ["TokenLabelError", "convert_token_labels", "open_label_writer", "open_token_labels",
           "read_official_label", "write_official_label", "make_token_labels", "teacher_labels",
           "TokenLabelDataset", "TokenLabelTransforms", "TokenLabelMixup", "TokenLabelStep", "TokenLabelTargets",
           "token_label_target"]
