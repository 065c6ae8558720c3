"""The tiny models and paths the tests share: one definition of each setting; a test overrides only
what it is about (``tiny_kwargs(num_classes=8)``)."""
import json
from pathlib import Path

import paddle

import ppim

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: A 2-block LV-ViT-S on 64x64 inputs (16 tokens): seconds to build, export and train.
TINY_LVVIT = dict(img_size=64, embed_dim=48, depth=2, num_heads=3, stem_dim=8)
#: A narrow SuperViT whose keep blocks (3, 6, 9) all exist, so every published sub-network runs.
TINY_SUPER = dict(embed_dim=48, depth=10, num_heads=3)


def tiny_kwargs(**overrides):
    """TINY_LVVIT with ``overrides``."""
    return {**TINY_LVVIT, **overrides}


def tiny_args(model="lvvit_s", **overrides):
    """The command-line flags that build that model: --model NAME --model-kwargs JSON."""
    return ["--model", model, "--model-kwargs", json.dumps(tiny_kwargs(**overrides) if model.startswith("lvvit")
                                                          else {**TINY_SUPER, **overrides})]


def tiny_lvvit(seed=0, **overrides):
    """A seeded tiny lvvit_s in eval mode."""
    paddle.seed(seed)
    model = ppim.create_model("lvvit_s", **tiny_kwargs(**overrides))
    model.eval()
    return model


def tiny_super(name="super_lvvit_s", seed=0, **overrides):
    """A seeded tiny super model (all 12 sub-networks) in eval mode; super_lvvit_s has the LV-ViT stem."""
    paddle.seed(seed)
    stem = {"stem_dim": 8} if name == "super_lvvit_s" else {}
    model = ppim.create_model(name, **{**TINY_SUPER, **stem, **overrides})
    model.eval()
    return model
