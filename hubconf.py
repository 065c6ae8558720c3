"""paddle.hub entry points: one per registered ppim model, with the constructor's arguments.

    import paddle
    paddle.hub.list("/path/to/ppim", source="local")                 # the model names
    paddle.hub.help("/path/to/ppim", "lvvit_s", source="local")      # its docstring
    model = paddle.hub.load("/path/to/ppim", "lvvit_s", source="local", pretrained=True)
    model = paddle.hub.load("OWNER/ppim:main", "lvvit_s", source="github", pretrained=True)
    model = paddle.hub.load("OWNER/ppim:main", "lvvit_s", source="gitee", pretrained=True)

Weights go to the ppim cache ($PPIM_HOME/weights, default ~/.cache/ppim/weights) as with
``ppim.create_model``; paddle.hub only fetches this code (github/gitee: into ~/.cache/paddle/hub).
"""
# paddle.hub checks these import names before loading an entry point.
dependencies = ["paddle", "numpy", "PIL", "tqdm", "requests"]

# Explicit names (as torchvision's hubconf), so the file reads as the list of models;
# tests/test_hubconf.py checks it against ppim.list_models().
from ppim.models.lvvit import (lvvit_l_448, lvvit_l_512, lvvit_m, lvvit_m_384, lvvit_m_448,  # noqa: E402,F401
                               lvvit_s, lvvit_s_384, lvvit_t)
from ppim.models.supervit import super_deit_s, super_lvvit_s  # noqa: E402,F401
