"""The registry: names, cfgs with weights metadata, ppim 1.x's available()."""
import pytest

import ppim

ALL = ["lvvit_l_448", "lvvit_l_512", "lvvit_m", "lvvit_m_384", "lvvit_m_448", "lvvit_s", "lvvit_s_384",
       "lvvit_t", "super_deit_s", "super_lvvit_s"]


def test_list_models_patterns():
    assert ppim.list_models() == ALL
    assert ppim.list_models("lvvit_m*") == ["lvvit_m", "lvvit_m_384", "lvvit_m_448"]
    assert ppim.list_models("lvvit*", pretrained=True) == [n for n in ALL if n.startswith("lvvit")]


@pytest.mark.smoke
@pytest.mark.parametrize("name", ALL)
def test_cfg_fields_and_constructor(name):
    cfg = ppim.get_model_cfg(name)
    for key in ("input_size", "resize", "crop", "interpolation", "mean", "std", "num_classes", "weights"):
        assert key in cfg, key
    weights = cfg["weights"]
    for key in ("url", "file_name", "format", "source_url", "top1", "top5", "params_m", "flops_g"):
        assert key in weights, key
    assert weights["url"].startswith("https://") and weights["format"] in ("pdparams", "pth")
    assert weights["file_name"].endswith(".pdparams" if weights["format"] == "pdparams" else (".pth", ".pth.tar"))
    assert callable(getattr(ppim, name))
    cfg["weights"]["url"] = "changed"  # a copy: the registry is not changed through it
    assert ppim.get_model_cfg(name)["weights"]["url"] != "changed"


def test_seed_urls_and_file_names():
    weights = ppim.get_model_cfg("lvvit_s")["weights"]
    assert weights["file_name"] == "lvvit_s_224.pdparams"
    assert weights["url"].startswith("https://bj.bcebos.com/v1/ai-studio-online/bf798145d3094d4ab89f")
    assert weights["source_url"].endswith("/1.0/lvvit_s-26M-224-83.3.pth.tar")
    assert (weights["top1"], weights["top5"], weights["params_m"], weights["flops_g"]) == (83.17, 95.87, 26.2, 6.6)
    assert ppim.get_model_cfg("lvvit_t")["weights"]["format"] == "pth"


def test_available_prints_like_ppim_1x(capsys):
    assert ppim.available() is None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "The pretrained models list as follow:"
    assert "{'lvvit': ['lvvit_l_448', 'lvvit_l_512', 'lvvit_m', 'lvvit_m_384', 'lvvit_m_448', 'lvvit_s', " \
           "'lvvit_s_384', 'lvvit_t']}" in out
    assert "The models support as follow:" in out and "['LVViT']" in out and "['SuperViT']" in out
