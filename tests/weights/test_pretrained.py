"""Loading pretrained weights end to end: registered URLs served by a real local HTTP server,
checks against the model, head replacement, positional-embedding resizing, safe reading."""
import io
import os
import pickle

import numpy as np
import paddle
import pytest

import ppim
from ppim import registry, weights
from http_server import LocalServer
from tiny import tiny_kwargs

TINY = tiny_kwargs()


def tiny(**kwargs):
    return ppim.create_model("lvvit_s", **{**TINY, **kwargs})


def pdparams_bytes(model):
    buffer = io.BytesIO()
    paddle.save(model.state_dict(), buffer)
    return buffer.getvalue()


def assert_same_weights(model, reference, skip=()):
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith(skip):
            np.testing.assert_array_equal(ours[key].numpy(), value.numpy(), err_msg=key)


@pytest.fixture
def served(monkeypatch):
    """lvvit_s's registered URL pointed at a local server that serves a tiny model's weights."""
    source = tiny()
    with LocalServer() as server:
        server.add("/lvvit_s_224.pdparams", pdparams_bytes(source))
        weights = registry._CFGS["lvvit_s"]["weights"]
        monkeypatch.setitem(weights, "url", server.url("/lvvit_s_224.pdparams"))
        yield server, source


@pytest.mark.smoke
def test_pretrained_true_downloads_once_then_loads_offline(served, capsys):
    server, source = served
    model = tiny(pretrained=True)
    assert_same_weights(model, source)
    assert "100%" in capsys.readouterr().err  # the progress bar
    cached = weights.weights_dir() / "lvvit_s_224.pdparams"
    assert cached.is_file() and (cached.parent / "lvvit_s_224.pdparams.sha256").is_file()
    server.close()
    assert_same_weights(tiny(pretrained=True), source)
    assert server.count() == 1


def test_other_class_count_drops_both_heads_with_a_warning(served):
    _, source = served
    with pytest.warns(UserWarning, match="head.weight, head.bias, aux_head.weight, aux_head.bias"):
        model = tiny(pretrained=True, num_classes=10)
    assert model.head.weight.shape == [48, 10] and model.aux_head.weight.shape == [48, 10]
    assert_same_weights(model, source, skip=("head.", "aux_head."))


def test_features_only_model_loads_without_heads(served):
    _, source = served
    with pytest.warns(UserWarning, match="classifier weights not loaded"):
        model = tiny(pretrained=True, num_classes=0)
    assert_same_weights(model, source, skip=("head.", "aux_head."))


@pytest.mark.smoke
def test_pos_embed_is_resized_bicubically_for_another_input_size(served):
    torch = pytest.importorskip("torch")
    _, source = served
    model = tiny(pretrained=True, img_size=96)  # 4x4 grid -> 6x6
    assert model.pos_embed.shape == [1, 37, 48]
    old = source.pos_embed.numpy()
    grid = torch.from_numpy(old[:, 1:].reshape(1, 4, 4, 48)).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = np.concatenate([old[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, 48).numpy()], axis=1)
    np.testing.assert_allclose(model.pos_embed.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert_same_weights(model, source, skip=("pos_embed",))
    model.eval()
    assert model(paddle.zeros([1, 3, 96, 96])).shape == [1, 1000]


def test_weights_of_another_model_are_refused_and_not_cached(monkeypatch):
    with LocalServer() as server:
        server.add("/lvvit_s_224.pdparams", pdparams_bytes(tiny(depth=3)))
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "url", server.url("/lvvit_s_224.pdparams"))
        with pytest.raises(weights.InvalidWeightsError) as err:
            tiny(pretrained=True)
    message = str(err.value)
    assert "lvvit_s_224.pdparams" in message and "unexpected" in message and "blocks.2.attn.qkv.weight" in message
    assert not (weights.weights_dir() / "lvvit_s_224.pdparams").exists()


def test_local_path_and_url(tmp_path):
    source = tiny()
    path = tmp_path / "mine.pdparams"
    paddle.save(source.state_dict(), str(path))
    assert_same_weights(tiny(pretrained=str(path)), source)
    with LocalServer() as server:
        server.add("/weights/mine.pdparams", path.read_bytes())
        assert_same_weights(tiny(pretrained=server.url("/weights/mine.pdparams")), source)
        url = server.url("/weights/mine.pdparams")
    assert weights.download.cache_path_for(url).is_file()  # kept under a folder keyed by the URL
    with pytest.raises(FileNotFoundError, match="no such file"):
        tiny(pretrained=str(tmp_path / "missing.pdparams"))


def test_hand_placed_file_is_used_and_a_truncated_one_is_named(served):
    server, source = served
    server.close()
    target = weights.weights_dir() / "lvvit_s_224.pdparams"
    target.parent.mkdir(parents=True)
    data = pdparams_bytes(source)
    target.write_bytes(data)
    assert_same_weights(tiny(pretrained=True), source)
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.InvalidWeightsError, match=str(target)):
        tiny(pretrained=True)


def test_offline_error_names_the_url_and_the_hand_placement_path(monkeypatch):
    from http_server import unused_port

    monkeypatch.setattr(weights.download, "RETRY_BASE_DELAY", 0.01)
    url = f"http://127.0.0.1:{unused_port()}/lvvit_s_224.pdparams"
    monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "url", url)
    with pytest.raises(weights.WeightsDownloadError) as err:
        tiny(pretrained=True)
    assert url in str(err.value) and str(weights.weights_dir() / "lvvit_s_224.pdparams") in str(err.value)


@pytest.mark.smoke
def test_read_pdparams_equals_paddle_load_and_runs_nothing(tmp_path):
    model = tiny()
    path = tmp_path / "w.pdparams"
    paddle.save(model.state_dict(), str(path))
    ours = weights.read_pdparams(path)
    theirs = paddle.load(str(path))
    assert list(ours) == list(model.state_dict())
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], np.asarray(value))

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    hostile = tmp_path / "hostile.pdparams"
    hostile.write_bytes(pickle.dumps({"pos_embed": Hostile()}))
    with pytest.raises(weights.InvalidWeightsError, match="system"):
        weights.read_pdparams(hostile)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_read_pdparams_every_paddle_save_protocol(tmp_path, protocol):
    """Older Paddle wrote protocol 2, which stores array bytes through _codecs.encode."""
    model = tiny(depth=1)
    path = tmp_path / "w.pdparams"
    paddle.save(model.state_dict(), str(path), protocol=protocol)
    ours = weights.read_pdparams(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(ours[key], value.numpy())
