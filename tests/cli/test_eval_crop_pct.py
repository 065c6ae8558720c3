"""ppim-eval --crop-pct: the official crop (lvvit_m: Resize 224, lvvit_s_384: Resize 426) as an
option next to ppim 1.x's transforms, which stay the default."""
import json

import numpy as np
import paddle
import pytest
from PIL import Image

import ppim
from ppim.cli.eval import main
from model_utils import randomize

TINY = dict(embed_dim=48, depth=1, num_heads=3, stem_dim=8, num_classes=4)


def photos(root, n=4):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = root / f"class_{i % 4}" / f"img_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        small = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((90 + 9 * i, 80 + 5 * i), Image.BICUBIC).save(path)
        samples.append((path, i % 4))
    return samples


def predictions(model, samples, resize):
    """Top-1 per image with Resize(resize) -> CenterCrop(64), written out with PIL here."""
    out = []
    for path, _ in samples:
        with Image.open(path) as image:
            image = image.convert("RGB")
        w, h = image.size
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        image = image.resize(size, Image.BICUBIC)
        left, top = int(round((size[0] - 64) / 2.0)), int(round((size[1] - 64) / 2.0))
        chw = np.asarray(image.crop((left, top, left + 64, top + 64)), dtype=np.float32).transpose(2, 0, 1) / 255
        chw = (chw - np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]) / \
            np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
        with paddle.no_grad():
            out.append(int(model(paddle.to_tensor(chw[None])).numpy().argmax()))
    return out


@pytest.mark.parametrize("crop_pct,resize", [(None, 70), ("1.0", 64), ("official", 64), ("0.5", 128)])
def test_eval_crop_pct(tmp_path, crop_pct, resize):
    """lvvit_m built at 64: the cfg's resize scales to 70 (248/224); its official crop_pct is 1.0."""
    samples = photos(tmp_path / "val")
    model = randomize(ppim.lvvit_m(img_size=64, **TINY), seed=3)
    checkpoint = tmp_path / "m.pdparams"
    paddle.save(model.state_dict(), str(checkpoint))
    out = tmp_path / "r.json"
    kwargs = {k: v for k, v in TINY.items() if k != "num_classes"}
    args = [str(tmp_path / "val"), "--model", "lvvit_m", "--checkpoint", str(checkpoint), "--img-size", "64",
            "--num-classes", "4", "--model-kwargs", json.dumps(kwargs), "-j", "0", "--no-progress",
            "--results-file", str(out)]
    assert main(args + (["--crop-pct", crop_pct] if crop_pct else [])) == 0
    results = json.loads(out.read_text())
    assert f"Resize({resize}, bicubic), CenterCrop(64)" in results["transforms"]
    expected = predictions(model, samples, resize)
    assert results["correct1"] == sum(p == label for p, (_, label) in zip(expected, samples))


def test_bad_crop_pct_is_one_error_line(tmp_path, capsys):
    assert main(["--model", "lvvit_m", "--crop-pct", "1.5", "--model-kwargs", json.dumps(TINY)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --crop-pct 1.5: give a fraction")
