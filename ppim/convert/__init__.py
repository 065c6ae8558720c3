"""The PyTorch -> Paddle key mapping (a leaf: reading and writing files is ppim.weights' business;
``ppim.weights.convert_file`` converts a checkpoint file)."""
from .mapping import to_paddle_layout

__all__ = ["to_paddle_layout"]
