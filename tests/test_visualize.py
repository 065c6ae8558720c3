"""Pictures: the PNGs tools/visualize.py writes are read back and their pixels checked against what
the model computes (kept tokens, per-token classes), the accuracy-vs-cost series against the
published tables, and a missing matplotlib is reported with the extra to install."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

import ppim  # noqa: E402
from ppim import visualize  # noqa: E402
from ppim.cli.visualize import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUPER = dict(embed_dim=48, depth=10, num_heads=3, stem_dim=8)
MODEL_KWARGS = '{"embed_dim": 48, "depth": 10, "num_heads": 3, "stem_dim": 8}'
DROPPED = (235, 235, 235)  # the colour the pictures give dropped tokens (ppim.visualize.DROPPED)


@pytest.fixture
def photo(tmp_path):
    """A textured 300x260 RGB photo (no pixel has the dropped-token colour: channels stay below 200)."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 200, (13, 15, 3)), np.ones((20, 20, 1)))
    noise = rng.integers(0, 40, (260, 300, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(np.clip(smooth * 0.8 + noise, 0, 199).astype(np.uint8)).save(path)
    return path


def cell_centres(box, grid):
    """Pixel (x, y) of each token cell's centre in a panel box, row-major."""
    left, top, right, _ = box
    size = right - left
    centres = [(c * size) // grid + size // (2 * grid) for c in range(grid)]
    return [(left + x, top + y) for y in centres for x in centres]


def test_kept_token_pictures_show_the_models_own_kept_tokens(photo, tmp_path, capsys):
    paddle.seed(0)
    out = tmp_path / "pictures"
    assert main([str(photo), "--model", "super_lvvit_s", "--model-kwargs", MODEL_KWARGS,
                 "--subnets", "224x0.5,160x0.7", "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"kept_tokens.png", "token_classes.png", "accuracy_vs_gflops.png"}
    assert "kept_tokens: " in capsys.readouterr().out
    picture = np.asarray(Image.open(out / "kept_tokens.png").convert("RGB"))
    # Two sub-network rows of 4 panels (input + blocks 3, 6, 9), each 224 + 2*8 wide, 224 + 40 + 2*8 high.
    assert picture.shape == (2 * 280, 4 * 240, 3)

    # The same model again (same seed): its kept positions, straight from the model.
    paddle.seed(0)
    model = ppim.super_lvvit_s(**SUPER)
    model.eval()
    _, x = visualize.load_crop(photo, model)
    for row, (img_size, keep_ratio) in enumerate([(224, 0.5), (160, 0.7)]):
        kept = [set(k[0].tolist()) for k in model.kept_tokens(x, img_size=img_size, keep_ratio=keep_ratio)]
        grid = img_size // 16
        assert len(kept[0]) < grid * grid
        input_panel = [tuple(picture[y, x]) for x, y in cell_centres(visualize.panel_box(row, 0), grid)]
        assert DROPPED not in input_panel
        for col, positions in enumerate(kept, 1):
            shown = {i for i, (x, y) in enumerate(cell_centres(visualize.panel_box(row, col), grid))
                     if tuple(picture[y, x]) != DROPPED}
            assert shown == positions, (img_size, keep_ratio, col)


def test_token_class_picture_paints_the_aux_head_classes(photo, tmp_path):
    paddle.seed(1)
    model = ppim.lvvit_s(img_size=64, embed_dim=48, depth=2, num_heads=3, stem_dim=8, num_classes=30)
    model.eval()
    crop, x = visualize.load_crop(photo, model)
    assert crop.shape == (64, 64, 3)
    written = visualize.visualize(photo, model, tmp_path)
    assert set(written) == {"token_classes", "accuracy_vs_gflops"}  # LV-ViT keeps every token
    picture = np.asarray(Image.open(written["token_classes"]).convert("RGB"))
    assert picture.shape == (280, 2 * 240 + 300, 3)
    # The classes computed here with numpy from the final tokens and the aux head's weights.
    tokens = model.forward_features(x).numpy()[0, 1:]
    classes = (tokens @ model.aux_head.weight.numpy() + model.aux_head.bias.numpy()).argmax(axis=1)
    named = [cls for cls, _ in visualize.class_legend(classes.reshape(4, 4))]
    colours = {cls: tuple(c) for cls, c in zip(named, visualize.class_colours(len(named)))}
    shown = [tuple(picture[y, x]) for x, y in cell_centres(visualize.panel_box(0, 1), 4)]
    expected = [colours.get(cls, visualize.OTHER) for cls in classes]
    assert shown == expected
    assert len(set(classes.tolist())) > 1  # more than one class: the check can fail


def test_accuracy_curve_series_are_the_published_figures(tmp_path):
    series = visualize.accuracy_vs_flops_points()
    assert set(series) == {"super_deit_s", "super_lvvit_s", "LV-ViT"}
    lvvit_s = {p["label"]: p for p in series["super_lvvit_s"]}
    # The SuperViT paper's published table (not the registry): 8x8 keep 0.5 and 14x14 keep 1.
    assert lvvit_s["128x0.5"]["top1"] == 76.64 and lvvit_s["224x1.0"]["top1"] == 83.47
    assert {p["label"]: p["top1"] for p in series["super_deit_s"]}["192x0.7"] == 79.62
    assert len(series["super_deit_s"]) == len(lvvit_s) == 12
    for points in (series["super_deit_s"], series["super_lvvit_s"]):
        by_label = {p["label"]: p["gflops"] for p in points}
        for size in (128, 160, 192, 224):  # keeping fewer tokens costs less
            assert by_label[f"{size}x0.5"] < by_label[f"{size}x0.7"] < by_label[f"{size}x1.0"]
    assert lvvit_s["224x1.0"]["gflops"] == pytest.approx(6.6, abs=0.1)  # lvvit_s's cost, README table
    family = {p["label"]: p for p in series["LV-ViT"]}
    assert family["lvvit_m"]["top1"] == 83.88 and family["lvvit_m"]["gflops"] == pytest.approx(12.7, abs=0.1)
    path = visualize.save_png(visualize.draw_accuracy_vs_flops(series), tmp_path / "curve.png")
    with Image.open(path) as image:
        assert image.size == (900, 600)
        assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank


def test_missing_matplotlib_names_the_extra(photo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(visualize.MissingExtraError, match=r'pip install "ppim\[plot\]"'):
        visualize.draw_accuracy_vs_flops()
    assert main([str(photo), "--model", "lvvit_s", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'pip install "ppim[plot]"' in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_command_line_errors_are_one_line(photo, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for args in ([str(bad), "--model", "lvvit_s"],
                 [str(photo), "--model", "lvvit_s", "--model-kwargs", MODEL_KWARGS.replace("10", "2"),
                  "--subnets", "224x0.5"],
                 [str(photo), "--model", "super_deit_s", "--model-kwargs", '{"depth": 10, "embed_dim": 48,'
                  ' "num_heads": 3}', "--subnets", "100x0.5"]):
        result = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize.py"), *args,
                                 "--output", str(tmp_path / "o")], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()  # a random-weights warning may come first
        assert lines[-1].startswith("error: ") and all(line.startswith("warning: ") for line in lines[:-1])


def test_curve_labels_sit_beside_their_own_points_without_overlaps():
    """The LV-ViT labels of the accuracy-vs-GFLOPs picture: no two overlap, none covers a marker of
    another point, and each one's nearest point is its own (the old picture put "lvvit_m_448" over
    the m_384 point and "lvvit_s" over super_lvvit_s)."""
    pytest.importorskip("matplotlib")
    fig = visualize.draw_accuracy_vs_flops()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    notes = [child for child in ax.texts if child.get_text().startswith("lvvit")]
    assert len(notes) >= 7  # the LV-ViT family with published figures
    points = [tuple(ax.transData.transform(line.get_xydata()[i])) for line in ax.get_lines()
              for i in range(len(line.get_xydata()))]
    boxes = [note.get_window_extent(renderer) for note in notes]
    for i, (note, box) in enumerate(zip(notes, boxes)):
        assert not any(box.overlaps(other) for j, other in enumerate(boxes) if j != i), note.get_text()
        own = tuple(ax.transData.transform(note.xy))
        centre = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
        nearest = min(points, key=lambda p: (p[0] - centre[0]) ** 2 + (p[1] - centre[1]) ** 2)
        assert nearest == pytest.approx(own), note.get_text()
        others = [p for p in points if p != pytest.approx(own)]
        assert not any(box.x0 - 2 < x < box.x1 + 2 and box.y0 - 2 < y < box.y1 + 2 for x, y in others), note.get_text()


# ----------------------------------------------------------------------------------------------
# Accuracy against measured latency (draw_accuracy_vs_latency, ppim-benchmark --picture)
# ----------------------------------------------------------------------------------------------

# super_lvvit_s as measured in docs/performance.md (ms, batch 1): the order by latency is not the
# order by GFLOPs (160x0.7 slower than 192x1.0), which is what the picture is for.
MEASURED_MS = {"128x0.5": 76, "160x0.5": 85, "128x1.0": 91, "128x0.7": 100, "192x0.5": 106, "160x1.0": 108,
               "192x0.7": 120, "224x0.5": 144, "192x1.0": 147, "160x0.7": 281, "224x0.7": 343, "224x1.0": 597}


def lines_by_gid(ax):
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def test_latency_picture_draws_the_measured_latencies_and_published_accuracies():
    from ppim.deploy.subnet_choice import choose
    from ppim.flops import subnet_costs

    published = ppim.get_model_cfg("super_lvvit_s")["weights"]["subnet_top1"]
    gflops = {f"{c['img_size']}x{c['keep_ratio']}": c["flops"] / 1e9 for c in subnet_costs("super_lvvit_s")}
    fig = visualize.draw_accuracy_vs_latency("super_lvvit_s", MEASURED_MS, engine="inference", precision="fp32",
                                             batch=1, threads=2, budget_ms=150)
    flops_ax, latency_ax = fig.axes
    for ratio in ("0.5", "0.7", "1.0"):
        keys = [f"{size}x{ratio}" for size in (128, 160, 192, 224)]  # input 128 to 224 along each line
        right, left = lines_by_gid(latency_ax)[f"keep {ratio}"], lines_by_gid(flops_ax)[f"keep {ratio}"]
        assert right.get_xdata().tolist() == [MEASURED_MS[k] for k in keys]
        assert right.get_ydata().tolist() == left.get_ydata().tolist() == [published[k] for k in keys]
        assert left.get_xdata().tolist() == pytest.approx([gflops[k] for k in keys])
    assert {t.get_text() for t in latency_ax.texts} == set(MEASURED_MS)  # every point labelled
    title = fig._suptitle.get_text()
    assert "inference fp32, batch 1, 2 threads" in title and ppim.runtime.machine().cpu_model in title

    # The budget line and the ringed pick are choose()'s: 192x1.0 (147 ms, 82.94%) within 150 ms.
    choice = choose(MEASURED_MS, published, 150)
    assert choice.key == "192x1.0"
    assert list(lines_by_gid(latency_ax)["budget"].get_xdata()) == [150, 150]
    assert lines_by_gid(latency_ax)["pick"].get_xydata().tolist() == [[147, 82.94]]
    assert lines_by_gid(flops_ax)["pick"].get_xydata().tolist() == [[pytest.approx(gflops["192x1.0"]), 82.94]]
    assert "192x1.0, 82.94%" in lines_by_gid(latency_ax)["pick"].get_label()

    none_fits = visualize.draw_accuracy_vs_latency("super_lvvit_s", MEASURED_MS, budget_ms=60)
    pick = lines_by_gid(none_fits.axes[1])["pick"]
    assert pick.get_xydata().tolist() == [[76, published["128x0.5"]]] and "none fits" in pick.get_label()
    assert not any(line.get_gid() in ("pick", "budget") for ax in
                   visualize.draw_accuracy_vs_latency("super_lvvit_s", MEASURED_MS).axes for line in ax.get_lines())


def test_latency_picture_refuses_what_it_cannot_draw():
    with pytest.raises(ppim.errors.InputError, match="no sub-networks"):
        visualize.draw_accuracy_vs_latency("lvvit_s", {"224x1.0": 10.0})
    with pytest.raises(ppim.errors.InputError, match="published top-1"):
        visualize.draw_accuracy_vs_latency("super_lvvit_s", {"32x0.5": 1.0, "64x1.0": 2.0})


def test_benchmark_rows_are_drawn_at_the_smallest_batch_with_the_fastest_engine():
    def row(engine, batch, key, ms):
        size, ratio = key.split("x")
        return {"model": "super_deit_s", "engine": engine, "precision": "fp32", "batch_size": batch, "threads": 2,
                "subnet": {"img_size": int(size), "keep_ratio": float(ratio)}, "ms_per_batch": ms}

    rows = [row("eager", 1, key, 2 * ms) for key, ms in MEASURED_MS.items()]
    rows += [row("inference", 1, key, ms) for key, ms in MEASURED_MS.items()]
    rows += [row("inference", 16, key, ms / 10) for key, ms in MEASURED_MS.items()]  # faster per batch, not batch 1
    rows += [{**row("openvino", 1, "224x1.0", 1.0), "ms_per_batch": None, "skipped": "not installed"}]
    fig, table = visualize.draw_benchmark_latency(rows, budget_ms=150)
    assert (table["engine"], table["batch"]) == ("inference", 1) and table["latency_ms"] == MEASURED_MS
    title = fig._suptitle.get_text()
    assert "super_deit_s" in title and "inference fp32, batch 1, 2 threads" in title
    assert lines_by_gid(fig.axes[1])["keep 1.0"].get_xdata().tolist() == [91, 108, 147, 597]
    with pytest.raises(ppim.errors.InputError, match="no sub-network was timed"):
        visualize.draw_benchmark_latency(rows[-1:])


def test_benchmark_picture_draws_the_rows_it_just_measured(tmp_path, monkeypatch, capsys):
    from ppim.cli import benchmark
    from tiny import tiny_args

    drawn = []
    save_png = visualize.save_png
    monkeypatch.setattr(visualize, "save_png", lambda fig, path: drawn.append(fig) or save_png(fig, path))
    picture, report = tmp_path / "pics" / "latency.png", tmp_path / "bench.json"
    assert benchmark.main([*tiny_args("super_lvvit_s", stem_dim=8), "--engine", "eager", "-b", "1", "--iters", "1",
                           "--warmup", "0", "--no-ceiling", "--json", str(report), "--picture", str(picture),
                           "--latency-ms", "100000"]) == 0
    assert f"wrote {picture} (eager fp32, batch 1)" in capsys.readouterr().out
    with Image.open(picture) as image:
        image.verify()
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == visualize.LATENCY_SIZE
    rows = json.loads(report.read_text())["rows"]
    measured = {f"{r['subnet']['img_size']}x{r['subnet']['keep_ratio']}": r["ms_per_batch"] for r in rows}
    assert len(measured) == 12
    latency_ax = drawn[0].axes[1]
    for ratio in ("0.5", "0.7", "1.0"):
        assert lines_by_gid(latency_ax)[f"keep {ratio}"].get_xdata().tolist() == pytest.approx(
            [measured[f"{size}x{ratio}"] for size in (128, 160, 192, 224)])
    assert lines_by_gid(latency_ax)["pick"].get_xdata().tolist() == pytest.approx([measured["224x1.0"]])


def test_benchmark_picture_errors_come_before_measuring(tmp_path, monkeypatch, capsys):
    from ppim.cli import benchmark
    from tiny import tiny_args

    monkeypatch.setattr("ppim.deploy.benchmark", lambda *a, **k: pytest.fail("measured"))
    picture = tmp_path / "latency.png"
    for args, needle in [(["--picture", str(picture)], "lvvit_s has none"),
                         (["--latency-ms", "50"], "give --picture PNG too")]:
        assert benchmark.main([*tiny_args("lvvit_s"), "-b", "1", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(visualize.MissingExtraError, match=r'pip install "ppim\[plot\]"'):
        visualize.draw_accuracy_vs_latency("super_lvvit_s", MEASURED_MS)
    assert benchmark.main([*tiny_args("super_lvvit_s"), "-b", "1", "--picture", str(picture)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and 'pip install "ppim[plot]"' in captured.err
    assert captured.out == "" and not picture.exists()
