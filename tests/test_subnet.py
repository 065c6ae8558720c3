"""The Subnet value, its one rule, the one parser of lists, the sub-network protocol every ppim model
offers, and the one MixToken/CutMix Box."""
import json

import numpy as np
import paddle
import pytest

import ppim
import tiny
from ppim.errors import InputError
from ppim.layers import NO_BOX, Box, random_box, swap_box
from ppim.subnet import Subnet, current_subnet, parse_subnets, subnets_of
from tiny import TINY_SUPER


@pytest.fixture(scope="module")
def supernet():
    with paddle.LazyGuard():  # the protocol needs no weights
        return ppim.create_model("super_deit_s", **TINY_SUPER, num_classes=5)


@pytest.mark.smoke
def test_subnet_parses_keys_dicts_and_orders():
    subnet = Subnet.parse(" 160X0.7 ")
    assert subnet == (160, 0.7) and subnet.img_size == 160 and subnet.keep_ratio == 0.7
    assert subnet.key == str(subnet) == "160x0.7" and Subnet(224, 1).key == "224x1.0"
    assert subnet.as_dict() == {"img_size": 160, "keep_ratio": 0.7}
    assert Subnet.of(subnet.as_dict()) == Subnet.of("160x0.7") == Subnet.of((160, 0.7)) == subnet
    assert sorted([Subnet(224, 0.5), Subnet(128, 1.0), Subnet(224, 0.7)]) == [(128, 1.0), (224, 0.5), (224, 0.7)]
    with pytest.raises(ValueError, match="IMG_SIZExKEEP_RATIO"):
        Subnet.parse("224-1.0")


def test_one_rule_per_call_in_set_subnet_and_in_lists(supernet):
    # img_size: a size with a positional embedding; keep_ratio: any real in (0, 1] (the official
    # blocks keep ceil(r * N) tokens for any r), the published ones are only named.
    assert supernet.check_subnet(160, 0.3) == Subnet(160, 0.3)
    for bad_size in (150, 256, True, "224"):
        with pytest.raises(ValueError, match="img_size"):
            supernet.check_subnet(bad_size, 1.0)
    for bad_ratio in (0, 1.5, -0.5, True, "1"):
        with pytest.raises(ValueError, match=r"keep_ratio must be a number in \(0, 1\]"):
            supernet.check_subnet(224, bad_ratio)
    with pytest.raises(ValueError, match="img_size"):
        supernet.set_subnet(150, 1.0)
    with pytest.raises(ValueError, match="img_size"):
        supernet.token_plan(img_size=150)
    with pytest.raises(InputError, match="img_size"):
        parse_subnets("150x1.0", supernet)
    assert current_subnet(supernet) == supernet.subnet == Subnet(224, 1.0)  # unchanged by the refusals


def test_parse_subnets_is_the_one_parser(supernet):
    assert parse_subnets(None, supernet) is None
    assert parse_subnets("all", supernet) == supernet.subnets == subnets_of(supernet)
    assert len(supernet.subnets) == 12 and all(isinstance(s, Subnet) for s in supernet.subnets)
    assert parse_subnets("all") is None  # no model yet: "every one", decided once it is built
    assert parse_subnets("224x1.0, 128x0.5,224x1.0", supernet) == [(224, 1.0), (128, 0.5)]
    assert parse_subnets([(160, 0.7), "192x0.5"], supernet) == [(160, 0.7), (192, 0.5)]
    with pytest.raises(InputError, match="--subnets no sub-networks"):
        parse_subnets(" , ", supernet, "--subnets")
    with pytest.raises(InputError, match="needs a super model"):
        parse_subnets("all", ppim.create_model("lvvit_s", img_size=32, embed_dim=16, depth=1, num_heads=2,
                                               stem_dim=8, num_classes=3))


def test_models_without_subnets_offer_the_empty_protocol():
    model = ppim.create_model("lvvit_s", img_size=32, embed_dim=16, depth=2, num_heads=2, stem_dim=8, num_classes=3)
    assert model.subnets == [] and model.subnet is None and subnets_of(model) == [] and current_subnet(model) is None
    assert subnets_of(paddle.nn.Linear(2, 2)) == [] and current_subnet(paddle.nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match="has no sub-networks"):
        model.set_subnet(32, 1.0)
    assert model.token_plan() == (32, [None, None])
    with pytest.raises(ValueError, match="keep_ratio"):
        model.token_plan(keep_ratio=0.5)


def test_token_plan_is_what_the_flop_counter_counts(supernet):
    side, keeps = supernet.token_plan(160, 0.5)
    assert side == 160 and [i for i, k in enumerate(keeps) if k is not None] == [3, 6, 9]
    assert {k for k in keeps if k is not None} == {0.5}
    assert ppim.flops.token_schedule(supernet, 160, 0.5)[:5] == [101, 101, 101, 101, 52]
    assert supernet.token_plan() == (224, supernet.token_plan(224, 1.0)[1])  # None: the current one


@pytest.mark.smoke
def test_one_box_type_with_the_official_order(rng):
    np.random.seed(3)
    box = random_box(14, 14)
    assert isinstance(box, Box)
    top, left, bottom, right = box  # the official MixToken order (bbx1, bby1, bbx2, bby2)
    assert (box.top, box.left, box.bottom, box.right) == (top, left, bottom, right)
    assert box.area == (bottom - top) * (right - left) and not NO_BOX.area and NO_BOX.empty
    x = paddle.to_tensor(rng.normal(size=(2, 1, 6, 7)).astype("float32"))
    swapped = swap_box(x, Box(top=1, left=2, bottom=4, right=6)).numpy()
    flipped = x.numpy()[::-1]
    np.testing.assert_array_equal(swapped[:, :, 1:4, 2:6], flipped[:, :, 1:4, 2:6])  # rows 1:4, columns 2:6
    np.testing.assert_array_equal(swapped[:, :, 4:, :], x.numpy()[:, :, 4:, :])
    assert ppim.training.mixup.Box is Box and ppim.models.supervit.Box is Box  # one definition


@pytest.mark.parametrize("tool", ["eval", "visualize", "benchmark"])
def test_command_lines_state_the_rule_in_one_error_line(tool, tmp_path, capsys):
    from importlib import import_module

    main = import_module(f"ppim.cli.{tool}").main
    sample = next((tiny.ROOT / "ppim" / "assets" / "sample").glob("*/*.jpg"))
    extra = {"visualize": [str(sample), "--output", str(tmp_path)], "eval": ["-j", "0"],
             "benchmark": ["--engine", "eager", "-b", "1", "--iters", "1", "--no-ceiling"]}[tool]
    if tool == "visualize":
        pytest.importorskip("matplotlib")
    # A model without sub-networks is refused from its registered cfg, before it is built.
    assert main([*extra, "--model", "lvvit_s", "--subnets", "224x1.0"]) == 2
    assert "--subnets needs a super model" in capsys.readouterr().err
    # A super model checks each sub-network by the one rule.
    kwargs = json.dumps({**TINY_SUPER, "num_classes": 5})
    assert main([*extra, "--model", "super_deit_s", "--model-kwargs", kwargs, "--subnets", "224x1.0,150x0.5"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--subnets" in errors[0] and "img_size 150" in errors[0]
