"""Training: building blocks with timm 0.4.x semantics (losses, Mixup/CutMix, optimizer and weight-decay
groups, the cosine schedule with warm-up and cooldown, the EMA of the weights), checkpoints, the train
loop (engine), the presets the command line and notebooks share (recipes: official, finetune) and
train(TrainConfig) (run)."""
from .ema import ModelEma
from .losses import (LabelSmoothingCrossEntropy, SoftTargetCrossEntropy, TokenLabelCrossEntropy,
                     TokenLabelSoftTargetCrossEntropy)
from .mixup import Mixup, mixup_target
from .optim import create_optimizer, param_groups_weight_decay
from .scheduler import CosineLRScheduler

__all__ = ["CosineLRScheduler", "LabelSmoothingCrossEntropy", "Mixup", "ModelEma", "SoftTargetCrossEntropy",
           "TokenLabelCrossEntropy", "TokenLabelSoftTargetCrossEntropy",
           "create_optimizer", "mixup_target", "param_groups_weight_decay"]
