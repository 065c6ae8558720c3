"""Training presets, shared by ``train(TrainConfig(...))`` and ``ppim-train``: a preset sets the
settings a run did not set itself, so a notebook and the command line train the same recipe.

* ``official``: the recipe a model was published with where it differs from the defaults
  (super_deit_s: SuperViT's DeiT recipe), nothing for the others. The default (``recipe=None``).
* ``finetune``: the usual settings for fine-tuning a pretrained model on a small dataset: the
  registered weights (unless a checkpoint is given), lr 1e-4 per 64 images, 1 warm-up epoch, no
  cooldown, drop-path 0.1, label smoothing 0.1, 30 epochs.
* ``none``: the TrainConfig defaults as they are.

Learning rates scale linearly with the global batch (``lr_per_512``: the lr of 512 images).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ["RECIPES", "apply_recipe", "recipe_settings"]

#: SuperViT(DeiT-S)'s recipe (main_deit.py).
DEIT = dict(mixup=0.8, cutmix=1.0, smoothing=0.1, drop_path=0.1, model_ema=True, model_ema_decay=0.99996,
            repeated_aug=True, lr_per_512=5e-4)
#: Fine-tuning a pretrained model on a small dataset.
FINETUNE = dict(pretrained=True, lr_per_512=8e-4, warmup_epochs=1, cooldown_epochs=0, min_lr=1e-6,
                drop_path=0.1, smoothing=0.1, epochs=30)
#: The models whose published recipe is not the TrainConfig defaults.
OFFICIAL = {"super_deit_s": DEIT}

RECIPES = ("official", "finetune", "none")


def recipe_settings(recipe: Optional[str], model: Optional[str]) -> Dict[str, Any]:
    """The settings of ``recipe`` (None: "official") for ``model`` (a registry name)."""
    recipe = recipe or "official"
    if recipe not in RECIPES:
        from ..errors import ParameterError

        raise ParameterError(f"{{recipe}}: choose one of {', '.join(RECIPES)}", recipe=recipe)
    if recipe == "finetune":
        return dict(FINETUNE)
    if recipe == "official":
        return dict(OFFICIAL.get(model or "", {}))
    return {}


def apply_recipe(values: Dict[str, Any], given: "set[str]", world_size: int = 1) -> List[Tuple[str, Any]]:
    """Set in ``values`` (TrainConfig fields by name) every setting of ``values["recipe"]`` that is
    not in ``given`` (the fields set explicitly); returns the (field, value) pairs it set."""
    settings = recipe_settings(values.get("recipe"), values.get("model"))
    changed = []
    lr_per_512 = settings.pop("lr_per_512", None)
    if settings.get("pretrained") and values.get("checkpoint"):
        settings.pop("pretrained")  # the checkpoint is the pretrained model
    for name, value in settings.items():
        if name not in given and values.get(name) != value:
            values[name] = value
            changed.append((name, value))
    if lr_per_512 is not None and "lr" not in given:
        values["lr"] = lr_per_512 * values["batch_size"] * world_size / 512
        changed.append(("lr", values["lr"]))
    return changed
