"""ppim.builder: checkpoints that describe their model, create_model(checkpoint_path=), the classifier
rule (a head that does not load is an error unless a new class count was asked for), and the error
contract (library errors name parameters, command lines their flags)."""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

import ppim
from ppim.builder import MODEL_KEY, checkpoint_description, class_names_of, describe_model, set_class_names
from ppim.cli.common import describe_error
from ppim.errors import ParameterError
from ppim.weights import CheckpointError, read_pdparams

TINY = dict(depth=1, embed_dim=32, num_heads=2, img_size=32)
CLASSES = ["cat", "dog", "fish"]


def fine_tuned(tmp_path, describe=True):
    """A 3-class tiny lvvit_t saved as ppim saves it (weights + description), or as older ppim did."""
    paddle.seed(0)
    model = ppim.create_model("lvvit_t", num_classes=3, **TINY)
    set_class_names(model, CLASSES)
    path = tmp_path / ("described.pdparams" if describe else "bare.pdparams")
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    paddle.save({**state, MODEL_KEY: describe_model(model, {"epochs": 2})} if describe else state, str(path))
    return model, path


def logits(model, seed=1):
    model.eval()
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype("float32"))
    return model(x).numpy()


def test_a_checkpoint_alone_builds_its_model(tmp_path):
    model, path = fine_tuned(tmp_path)
    description = checkpoint_description(path)
    assert description["name"] == "lvvit_t" and description["num_classes"] == 3
    assert description["class_names"] == CLASSES and description["input_size"] == [3, 32, 32]
    assert description["kwargs"]["depth"] == 1 and description["args"] == {"epochs": 2}
    for rebuilt in (ppim.create_model(checkpoint_path=str(path)), ppim.lvvit_t(pretrained=str(path))):
        assert rebuilt.num_classes == 3 and len(rebuilt.blocks) == 1
        assert class_names_of(rebuilt) == CLASSES
        np.testing.assert_array_equal(logits(rebuilt), logits(model))
    # the weights reader and paddle's own set_state_dict both take the file as a state dict
    assert MODEL_KEY not in read_pdparams(path)
    missing, unexpected = model.set_state_dict(paddle.load(str(path)))
    assert not missing and unexpected == [MODEL_KEY]


def test_contradictions_name_both_values(tmp_path):
    _, path = fine_tuned(tmp_path)
    with pytest.raises(ParameterError) as info:
        ppim.create_model("lvvit_s", checkpoint_path=str(path))
    assert "name='lvvit_s'" in str(info.value) and "lvvit_t" in str(info.value)
    assert describe_error(info.value).startswith("--model lvvit_s contradicts --checkpoint ")
    with pytest.raises(ParameterError) as info:  # a scoring tool: the head must load
        ppim.create_model(checkpoint_path=str(path), num_classes=1000, new_head=False)
    assert "num_classes=1000" in str(info.value) and "3-class" in str(info.value)
    assert "--num-classes 1000" in describe_error(info.value)
    # fine-tuning to another class count is asked for by passing it: a fresh head, said once
    with pytest.warns(UserWarning, match="classifier weights not loaded"):
        model = ppim.create_model(checkpoint_path=str(path), num_classes=5)
    assert model.num_classes == 5 and class_names_of(model) is None


def test_a_head_that_does_not_load_is_an_error(tmp_path):
    """An older checkpoint (no description) of 3 classes, built without num_classes: the model would
    have 1000 random classes. That is an error naming both counts, not a warning and a score."""
    _, path = fine_tuned(tmp_path, describe=False)
    with pytest.raises(ParameterError, match="3-class classifier") as info:
        ppim.create_model("lvvit_t", checkpoint_path=str(path), **TINY)
    assert "--num-classes 3" in describe_error(info.value)
    model = ppim.create_model("lvvit_t", checkpoint_path=str(path), num_classes=3, **TINY)  # flags still work
    assert model.num_classes == 3 and class_names_of(model) is None
    with pytest.raises(ParameterError, match="does not say which model"):
        ppim.create_model(checkpoint_path=str(path))


def test_a_damaged_description_is_refused(tmp_path):
    model, path = fine_tuned(tmp_path)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    for bad, needle in (({**describe_model(model), "class_names": ["a"]}, "class_names"),
                        ({**describe_model(model), "version": 99}, "upgrade ppim"), ("lvvit_t", "not a dict")):
        paddle.save({**state, MODEL_KEY: bad}, str(path))
        with pytest.raises(CheckpointError, match=needle):
            ppim.create_model(checkpoint_path=str(path))


def test_parameter_errors_spell_parameters_or_flags():
    error = ParameterError("{lr} is too high for {path}: lower {lr:name}, add {clip_grad:name}, or pass "
                           "{num_classes:=3} ({val:=False}); {x} stays", lr=5.0, clip_grad=None, num_classes=1000,
                           val=None, path="runs/{a}")
    assert str(error) == ("lr=5.0 is too high for path='runs/{a}': lower lr, add clip_grad, or pass num_classes=3 "
                          "(val=False); {x} stays")
    assert describe_error(error) == ("--lr 5.0 is too high for --path runs/{a}: lower --lr, add --clip-grad, or "
                                     "pass --num-classes 3 (--no-val); {x} stays")


def test_short_schedules_are_scaled_to_reach_their_peak():
    from ppim.training.scheduler import CosineLRScheduler, fit_schedule

    assert fit_schedule(30, 5, 10) == (5, 10, None)  # fits: timm's schedule as it is
    warmup, cooldown, note = fit_schedule(3, 5, 10)
    assert note.count("\n") == 0 and "scaled" in note and warmup + cooldown <= 1.5 and cooldown == 1
    steps = 4
    # as run.py builds it: per update, the cosine after the warm-up, the cooldown at the end of the run
    scheduler = CosineLRScheduler(5e-4, epochs=3 - cooldown - warmup, warmup_epochs=warmup, cooldown_epochs=cooldown,
                                  t_in_epochs=False, warmup_prefix=True, steps_per_epoch=steps)
    lrs = [scheduler.lr_at(t) for t in range(3 * steps)]
    assert max(lrs) == pytest.approx(5e-4)  # the peak is reached (the run never left warm-up)
    assert lrs.index(max(lrs)) == round(warmup * steps) < steps  # right after the warm-up, in the first epoch
    assert lrs[:lrs.index(max(lrs))] == sorted(lrs[:lrs.index(max(lrs))])  # rising, then the cosine falls
    assert lrs[-steps:] == [pytest.approx(1e-5)] * steps and all(math.isfinite(v) for v in lrs)  # the cooldown


def test_recipes_are_the_library_s(tmp_path):
    """train(TrainConfig(model="super_deit_s")) gets SuperViT's DeiT recipe as the command line does;
    fields the caller set win; recipe="finetune" gives the fine-tuning settings."""
    from ppim.training.run import TrainConfig, _start

    logged = []
    config, _ = _start(TrainConfig(data=str(tmp_path), model="super_deit_s", batch_size=128), None, logged.append, 1)
    assert (config.mixup, config.cutmix, config.model_ema, config.repeated_aug) == (0.8, 1.0, True, True)
    assert config.lr == pytest.approx(5e-4 * 128 / 512) and "recipe official" in logged[0]
    config, _ = _start(TrainConfig(data=str(tmp_path), model="super_deit_s", mixup=0.2), None, logged.append, 1)
    assert config.mixup == 0.2 and config.cutmix == 1.0
    config, _ = _start(TrainConfig(data=str(tmp_path), model="lvvit_s", recipe="finetune", epochs=5), None,
                       logged.append, 1)
    assert config.pretrained and config.epochs == 5 and config.warmup_epochs == 1 and config.cooldown_epochs == 0
    assert config.lr == pytest.approx(8e-4 * 64 / 512)
    config, _ = _start(TrainConfig(data=str(tmp_path), model="lvvit_s"), None, logged.append, 1)
    assert config == TrainConfig(data=str(tmp_path), model="lvvit_s")  # no recipe of its own
    with pytest.raises(ParameterError, match="recipe='fast'"):
        _start(TrainConfig(data=str(tmp_path), model="lvvit_s", recipe="fast"), None, logged.append, 1)


def test_ema_weights_are_announced_once(tmp_path, capsys, caplog):
    model, _ = fine_tuned(tmp_path)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    path = tmp_path / "ema.pdparams"
    paddle.save({"model": state, "model_ema": state, MODEL_KEY: describe_model(model)}, str(path))
    capsys.readouterr()
    with caplog.at_level("INFO"):
        ppim.create_model(checkpoint_path=str(path), ema=True)
    said = capsys.readouterr().err + caplog.text
    assert said.count("loaded the EMA weights") == 1, said
