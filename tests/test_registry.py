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


def test_list_models_takes_lists_and_exclude_filters_as_timm():
    assert ppim.list_models(["lvvit_s*", "super_*"], exclude_filters="*_384") == [
        "lvvit_s", "super_deit_s", "super_lvvit_s"]
    assert ppim.list_models("lvvit*", exclude_filters=["*_448", "*_512", "*_384"]) == ["lvvit_m", "lvvit_s", "lvvit_t"]
    assert ppim.list_pretrained("super_*") == ["super_deit_s", "super_lvvit_s"]
    assert ppim.list_pretrained() == ALL  # every model has published weights
    assert ppim.is_model("lvvit_s") and not ppim.is_model("lvvit_x") and not ppim.is_model("lvvit*")


@pytest.mark.parametrize("name", ALL)
def test_flops_g_is_the_counted_figure(name):
    from ppim import flops

    counted = flops.count(flops.model_for_counting(name))["flops"] / 1e9
    assert ppim.get_model_cfg(name)["weights"]["flops_g"] == pytest.approx(counted, abs=0.05)


def test_lvvit_m_keeps_the_published_flops_with_a_note():
    weights = ppim.get_model_cfg("lvvit_m")["weights"]
    assert (weights["flops_g"], weights["published_flops_g"]) == (12.7, 16.0) and "12.7" in weights["flops_note"]


# The eval resize of each model (ppim 1.x's transforms) and the official one where it differs; timm's rule
# resize = floor(crop / crop_pct) is written out here.
CROPS = {"lvvit_s": (224, 248, None), "lvvit_m": (224, 248, 224), "lvvit_s_384": (384, 384, 426),
         "lvvit_m_448": (448, 448, None), "super_deit_s": (224, 256, None), "super_lvvit_s": (224, 248, None)}


@pytest.mark.parametrize("name", sorted(CROPS))
def test_crop_pct_and_the_official_crop(name):
    crop, resize, official = CROPS[name]
    cfg = ppim.get_model_cfg(name)
    assert (cfg["crop"], cfg["resize"], int(crop / cfg["crop_pct"])) == (crop, resize, resize)
    assert ppim.create_transforms(name).resize == resize
    if official is None:
        assert "official_crop_pct" not in cfg
    else:
        assert int(crop / cfg["official_crop_pct"]) == official
        assert ppim.create_transforms(name, crop_pct=cfg["official_crop_pct"]).resize == official


def test_create_transforms_takes_a_model_and_its_size():
    model = ppim.lvvit_s(img_size=64, embed_dim=48, depth=1, num_heads=3, stem_dim=8)
    transforms = ppim.create_transforms(model)
    assert (transforms.resize, transforms.crop) == (int(64 * 248 / 224), 64)
    assert model.default_cfg["crop_pct"] == pytest.approx(64 / 70, abs=0.01)
    with pytest.raises(TypeError, match="a model name, a cfg dict or a ppim model"):
        ppim.create_transforms(3)
