"""PyTorch checkpoints to ppim: a safe, torch-free reader and the key mapping."""
from .mapping import ConversionReport, convert_checkpoint, convert_file, select_state_dict, to_paddle_layout
from .torch_reader import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint

__all__ = ["CheckpointError", "ConversionReport", "UnsafeCheckpointError", "convert_checkpoint", "convert_file",
           "load_torch_checkpoint", "select_state_dict", "to_paddle_layout"]
