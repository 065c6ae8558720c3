"""Pictures where one would rather look than read:

- ``kept_tokens.png``: which patch tokens a SuperViT sub-network keeps after each token-keeping block
  (3, 6, 9), drawn over the crop the model sees;
- ``token_classes.png``: LV-ViT's per-token class map, the arg-max of the aux head on every patch token
  (what token labeling trains), next to the crop;
- ``accuracy_vs_gflops.png``: published top-1 against counted cost for the 12 sub-networks of both
  super models and the LV-ViT family;
- the accuracy-vs-latency picture (:func:`draw_accuracy_vs_latency`, ``ppim-benchmark --picture``): one
  super model's 12 sub-networks, published top-1 against counted cost and, beside it, against the
  latency measured on this machine, with a latency budget and the sub-network it picks.

matplotlib is an optional extra (``pip install "ppim[plot]"``); nothing else in ppim needs it. Only
matplotlib's object API is used (no pyplot), so no global backend or figure state is touched.

Layout (pixels, fixed so pictures of the same kind are the same size): every image panel is
``PANEL`` x ``PANEL`` pixels, the crop resampled to it, with a ``TITLE`` pixel title band above and
``MARGIN`` pixels around. Token cells are painted in numpy and shown 1:1 (nearest), so the picture
is the mask, not an approximation of it.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
from PIL import Image

from .data import imagenet_class_names, load_image
from .errors import InputError, PpimError
from .flops import count, model_for_counting, subnet_costs
from .fileio import write_atomic
from .layers import eval_mode
from .registry import get_model_cfg, list_models, model_name
from .subnet import Subnet, SubnetLike, current_subnet, parse_subnets, subnets_of
from .transforms import center_crop_box, create_transforms, resized_shape

PANEL = 224           # pixels of an image panel (the crop, resampled to it)
TITLE = 40            # pixels of the title band above a panel
MARGIN = 8            # pixels around every panel
DROPPED = (235, 235, 235)   # colour of the tokens a sub-network dropped
CURVE_SIZE = (900, 600)     # pixels of the accuracy-vs-cost plot
LATENCY_SIZE = (1400, 640)  # pixels of the accuracy-vs-GFLOPs and accuracy-vs-latency panels side by side
KEEP_MARKERS = {"0.5": "v", "0.7": "s", "1.0": "o"}  # marker of each keep ratio in the accuracy plots
LEGEND_WIDTH = 300          # pixels of the class legend right of the token-class panels
TOP_CLASSES = 10            # classes named in the legend (the others are drawn grey)
OTHER = (200, 200, 200)     # colour of the tokens of the classes not in the legend

ImageSource = Union[str, os.PathLike, Image.Image]


class MissingExtraError(PpimError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require_matplotlib():
    """matplotlib's Figure class, or MissingExtraError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(
            'ppim.visualize draws with matplotlib, which is not installed: pip install "ppim[plot]" '
            "(or pip install matplotlib)") from None
    return Figure


# ----------------------------------------------------------------------------------------------
# What the model computes
# ----------------------------------------------------------------------------------------------


def load_crop(image: ImageSource, model: paddle.nn.Layer) -> Tuple[np.ndarray, paddle.Tensor]:
    """The model's eval crop of ``image``: (HWC uint8 crop as shown, (1, 3, S, S) input tensor).
    The shown crop is the same resize and centre crop, without normalisation."""
    transforms = create_transforms(model.pretrained_cfg)
    image = load_image(image) if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
    resized = image.resize(resized_shape(*image.size, transforms.resize), Image.BICUBIC)
    shown = np.asarray(resized.crop(center_crop_box(*resized.size, transforms.crop)))
    return shown, paddle.to_tensor(transforms.to_numpy(image)[None])


def kept_token_masks(model: paddle.nn.Layer, x: paddle.Tensor, img_size: Optional[int] = None,
                     keep_ratio: Optional[float] = None) -> np.ndarray:
    """Which patch tokens a SuperViT sub-network keeps after each of its keep blocks:
    bool (B, len(model.keep_blocks), grid, grid), grid = img_size / patch size (row-major token
    order). Straight from ``model.kept_tokens`` (the model's own kept positions)."""
    current = current_subnet(model)
    img_size, keep_ratio = model.check_subnet(current.img_size if img_size is None else img_size,
                                              current.keep_ratio if keep_ratio is None else keep_ratio)
    grid = img_size // model.patch_size
    with paddle.no_grad():
        kept = model.kept_tokens(x, img_size=img_size, keep_ratio=keep_ratio)
    masks = np.zeros((x.shape[0], len(kept), grid * grid), dtype=bool)
    for block, positions in enumerate(kept):
        np.put_along_axis(masks[:, block], positions.numpy(), True, axis=1)
    return masks.reshape(x.shape[0], len(kept), grid, grid)


def token_classes(model: paddle.nn.Layer, x: paddle.Tensor) -> np.ndarray:
    """The class the aux head gives every patch token: int (B, grid, grid). SuperViT runs its full
    sub-network (every token present)."""
    if getattr(model, "aux_head", None) is None or model.num_classes <= 0:
        raise ValueError(f"{model_name(model)} has no aux head: per-token classes need an LV-ViT "
                         f"(lvvit_*) or super_lvvit_s with its classifier")
    with paddle.no_grad():
        subnets = subnets_of(model)
        with model.using_subnet(*max(subnets)) if subnets else contextlib.nullcontext():
            tokens = model.forward_features(x)
        classes = model.aux_head(tokens[:, 1:]).argmax(axis=-1).numpy()
    grid = int(round(classes.shape[1] ** 0.5))
    return classes.reshape(x.shape[0], grid, grid)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def _cells(values: np.ndarray, size: int) -> np.ndarray:
    """(grid, grid, ...) -> (size, size, ...): each token cell repeated over its pixels (the
    cells are size / grid pixels wide, spread evenly when that is not a whole number)."""
    grid = values.shape[0]
    index = np.arange(size) * grid // size
    return values[index][:, index]


def _panel_figure(rows: int, cols: int, extra_width: int = 0):
    Figure = require_matplotlib()
    width = cols * (PANEL + 2 * MARGIN) + extra_width
    height = rows * (PANEL + TITLE + 2 * MARGIN)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    fig.patch.set_facecolor("white")
    return fig, width, height


def _panel(fig, width: int, height: int, row: int, col: int, picture: np.ndarray, title: str) -> None:
    """An axes of exactly PANEL x PANEL pixels at (row, col) showing ``picture`` 1:1."""
    left = col * (PANEL + 2 * MARGIN) + MARGIN
    top = row * (PANEL + TITLE + 2 * MARGIN) + MARGIN + TITLE
    ax = fig.add_axes([left / width, 1 - (top + PANEL) / height, PANEL / width, PANEL / height])
    ax.imshow(picture, interpolation="nearest", extent=(0, PANEL, PANEL, 0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def panel_box(row: int, col: int) -> Tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of the image panel at (row, col) of a picture."""
    left = col * (PANEL + 2 * MARGIN) + MARGIN
    top = row * (PANEL + TITLE + 2 * MARGIN) + MARGIN + TITLE
    return left, top, left + PANEL, top + PANEL


def _resized(crop: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(crop).resize((PANEL, PANEL), Image.BICUBIC))


def draw_kept_tokens(crop: np.ndarray, masks: Dict[Subnet, np.ndarray], keep_blocks: Sequence[int]):
    """One row per sub-network: the crop, then the tokens kept after each keep block (dropped ones
    painted ``DROPPED``). masks: {(img_size, keep_ratio): bool (len(keep_blocks), grid, grid)}."""
    fig, width, height = _panel_figure(len(masks), 1 + len(keep_blocks))
    shown = _resized(crop)
    for row, ((img_size, keep_ratio), mask) in enumerate(masks.items()):
        _panel(fig, width, height, row, 0, shown, f"input, sub-network {img_size}x{keep_ratio}")
        for col, (block, kept) in enumerate(zip(keep_blocks, mask), 1):
            picture = np.where(_cells(kept, PANEL)[..., None], shown, np.array(DROPPED, dtype=np.uint8))
            _panel(fig, width, height, row, col, picture,
                   f"after block {block} (0-based)\n{int(kept.sum())} of {kept.size} tokens kept")
    return fig


def class_colours(count: int) -> np.ndarray:
    """``count`` distinct RGB uint8 colours for the most frequent classes: tab10, then tab20b and
    tab20c, without their greys (grey is for the other classes)."""
    from matplotlib import colormaps

    colours = [colormaps["tab10"](i) for i in range(10) if i != 7]
    colours += [colormaps["tab20b"](i) for i in range(20)] + [colormaps["tab20c"](i) for i in range(16)]
    if count > len(colours):
        raise ValueError(f"at most {len(colours)} classes can be coloured, asked for {count}")
    return (np.array(colours[:count])[:, :3] * 255).round().astype(np.uint8)


def class_legend(classes: np.ndarray, top: int = TOP_CLASSES) -> List[Tuple[int, int]]:
    """The ``top`` most frequent classes of a (grid, grid) class map: [(class, token count), ...],
    most frequent first, ties by class index."""
    values, counts = np.unique(classes, return_counts=True)
    order = sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: (-vc[1], vc[0]))
    return order[:top]


def draw_token_classes(crop: np.ndarray, classes: np.ndarray, class_names: Sequence[str]):
    """The crop and its per-token class map: the ``TOP_CLASSES`` most frequent classes in
    distinct colours (named, with their token counts, in the legend), the rest grey."""
    require_matplotlib()  # the extra is checked before drawing
    legend = class_legend(classes)
    colours = class_colours(len(legend))
    painted = np.empty(classes.shape + (3,), dtype=np.uint8)
    painted[:] = OTHER
    for (cls, _), colour in zip(legend, colours):
        painted[classes == cls] = colour
    fig, width, height = _panel_figure(1, 2, LEGEND_WIDTH)
    _panel(fig, width, height, 0, 0, _resized(crop), "input")
    grid = classes.shape[0]
    _panel(fig, width, height, 0, 1, _cells(painted, PANEL), f"aux-head class of each token ({grid}x{grid})")
    left = 2 * (PANEL + 2 * MARGIN)
    for row, ((cls, tokens), colour) in enumerate(zip(legend, colours)):
        y = 1 - (MARGIN + TITLE + 8 + row * 20) / height
        fig.text(left / width, y, "\u25a0", color=colour / 255, fontsize=12, va="center")
        name = class_names[cls] if cls < len(class_names) else f"class {cls}"
        fig.text((left + 18) / width, y, f"{cls} {name[:28]} ({tokens})", fontsize=8, va="center")
    others = classes.size - sum(tokens for _, tokens in legend)
    if others:
        y = 1 - (MARGIN + TITLE + 8 + len(legend) * 20) / height
        fig.text(left / width, y, "\u25a0", color=np.array(OTHER) / 255, fontsize=12, va="center")
        fig.text((left + 18) / width, y, f"other classes ({others})", fontsize=8, va="center")
    return fig


def accuracy_vs_flops_points() -> Dict[str, List[Dict[str, Any]]]:
    """The series of the accuracy-vs-cost plot: {series name: [{"label", "gflops", "top1"}, ...]}.
    top1: the registry's published figures (SuperViT: the paper's 12 sub-networks, LV-ViT: each
    model's); gflops: multiply-accumulates counted by ppim.flops (one convention for every point)."""
    series: Dict[str, List[Dict[str, Any]]] = {name: _subnet_points(name) for name in list_models("super_*")}
    lvvit = []
    for name in list_models("lvvit_*"):
        top1 = get_model_cfg(name)["weights"]["top1"]
        if top1 is not None:
            lvvit.append({"label": name, "gflops": count(model_for_counting(name))["flops"] / 1e9, "top1": top1})
    series["LV-ViT"] = sorted(lvvit, key=lambda p: p["gflops"])
    return series


def _subnet_points(name: str) -> List[Dict[str, Any]]:
    """A super model's published sub-networks: [{"label": "160x0.7", "gflops", "top1"}, ...] in
    ``model.subnets`` order (GFLOPs counted by ppim.flops, top-1 the cfg's ``weights.subnet_top1``)."""
    table = get_model_cfg(name)["weights"]["subnet_top1"]
    return [{"label": Subnet.of(c).key, "gflops": c["flops"] / 1e9, "top1": table[Subnet.of(c).key]}
            for c in subnet_costs(name) if Subnet.of(c).key in table]


def _keep_ratio_lines(ax, name: str, points: List[Dict[str, Any]], x: str, colours: Mapping[str, str]) -> None:
    """One line per keep ratio through ``points`` (input 128 to 224 along it), x from ``p[x]``, keep
    ratio by marker (KEEP_MARKERS) and by ``colours[ratio]``; each line's gid is "keep <ratio>"."""
    for ratio, marker in KEEP_MARKERS.items():
        sub = sorted((p for p in points if p["label"].endswith("x" + ratio)), key=lambda p: Subnet.parse(p["label"]))
        if sub:
            ax.plot([p[x] for p in sub], [p["top1"] for p in sub], "-" + marker, color=colours[ratio], alpha=0.9,
                    label=f"{name}, keep {ratio} (128-224)", gid=f"keep {ratio}")


def draw_accuracy_vs_flops(series: Optional[Dict[str, List[Dict[str, Any]]]] = None):
    """Published top-1 against GFLOPs (log scale): each super model's sub-networks (keep ratio by
    marker, lines join equal keep ratios) and the LV-ViT family."""
    Figure = require_matplotlib()
    series = accuracy_vs_flops_points() if series is None else series
    fig = Figure(figsize=(CURVE_SIZE[0] / 100, CURVE_SIZE[1] / 100), dpi=100)
    ax = fig.add_axes([0.08, 0.1, 0.9, 0.83])
    labelled = None
    for colour, (name, points) in zip(("tab:blue", "tab:orange", "tab:green"), series.items()):
        if name == "LV-ViT":
            ax.plot([p["gflops"] for p in points], [p["top1"] for p in points], "-D", color=colour,
                    label="LV-ViT family")
            labelled = (points, colour)
            continue
        _keep_ratio_lines(ax, name, points, "gflops", dict.fromkeys(KEEP_MARKERS, colour))
    ax.set_xscale("log")
    gflops = [p["gflops"] for points in series.values() for p in points]
    ax.set_xlim(min(gflops) / 1.3, max(gflops) * 1.8)
    if labelled is not None:
        every = [(p["gflops"], p["top1"]) for points in series.values() for p in points]
        place_labels(fig, ax, *labelled, every)
    ax.set_xlabel("GFLOPs per image (multiply-accumulates, counted by ppim.flops; log scale)")
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.set_title("Accuracy against cost: SuperViT sub-networks and LV-ViT")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


#: Where a label may sit around its point, in points (x, y, horizontal alignment), in order of preference.
_LABEL_SPOTS = [(6, -3, "left"), (-6, -3, "right"), (4, 5, "left"), (-4, 5, "right"), (4, -12, "left"),
                (-4, -12, "right"), (0, 8, "center"), (0, -15, "center"), (10, 10, "left"), (-10, 10, "right"),
                (10, -18, "left"), (-10, -18, "right")]


def place_labels(fig, ax, points: List[Dict[str, Any]], colour: Union[str, Sequence[str]],
                 avoid: Sequence[Tuple[float, float]], marker_px: float = 5.0, x: str = "gflops") -> List[Any]:
    """Annotate each point (x from ``p[x]``, y from ``p["top1"]``) with its label next to it: the
    first spot (see _LABEL_SPOTS) where the text stays inside the axes, overlaps no label placed
    before and no marker of ``avoid`` (data coordinates of every plotted point), and has its own
    point as the nearest one; else the spot with the fewest overlaps. ``colour``: one for all, or
    one per point. Returns the annotations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    ax.set_ylim(ax.get_ylim())  # settle the autoscaled limits: pixel positions must not move afterwards
    to_px = ax.transData.transform
    box = ax.get_window_extent(renderer)
    markers = [tuple(to_px(xy)) for xy in avoid]
    placed: List[Any] = []
    annotations = []
    colours = [colour] * len(points) if isinstance(colour, str) else list(colour)
    for p, colour in zip(points, colours):
        own = tuple(to_px((p[x], p["top1"])))
        best = None
        for dx, dy, ha in _LABEL_SPOTS:
            note = ax.annotate(p["label"], (p[x], p["top1"]), textcoords="offset points", xytext=(dx, dy),
                               fontsize=7, color=colour, ha=ha)
            extent = note.get_window_extent(renderer)
            overlaps = sum(extent.overlaps(other) for other in placed)
            overlaps += sum(_hits(extent, xy, marker_px) for xy in markers)
            outside = not (box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1)
            centre = ((extent.x0 + extent.x1) / 2, (extent.y0 + extent.y1) / 2)
            nearest = min(markers, key=lambda xy: (xy[0] - centre[0]) ** 2 + (xy[1] - centre[1]) ** 2)
            score = overlaps + 10 * outside + (nearest != own)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, note, extent)
            else:
                note.remove()
            if score == 0:
                break
        placed.append(best[2])
        annotations.append(best[1])
    return annotations


LATENCY_COLOURS = {"0.5": "tab:blue", "0.7": "tab:orange", "1.0": "tab:green"}  # keep ratio -> line colour


def accuracy_vs_latency_points(model: Union[str, paddle.nn.Layer], latencies: Mapping[str, float]
                               ) -> List[Dict[str, Any]]:
    """The points of the accuracy-vs-latency picture: ``[{"label": "160x0.7", "gflops", "top1",
    "ms"}, ...]``, the published sub-networks of ``model`` (a super model or its name; see
    accuracy_vs_flops_points) with the measured ``latencies`` ("160x0.7" -> ms, e.g. from
    ppim.deploy.measure_subnets). Sub-networks without a latency, or without a published top-1,
    are left out; InputError when none is left."""
    name = model if isinstance(model, str) else model_name(model)
    if not get_model_cfg(name).get("subnets"):
        raise InputError(f"{name} has no sub-networks (super_deit_s and super_lvvit_s do)")
    points = [{**p, "ms": float(latencies[p["label"]])} for p in _subnet_points(name) if p["label"] in latencies]
    if not points:
        raise InputError(f"none of the measured sub-networks ({', '.join(latencies) or 'none'}) has a published "
                         f"top-1 for {name}")
    return points


def draw_accuracy_vs_latency(model: Union[str, paddle.nn.Layer], latencies: Mapping[str, float],
                             engine: str = "inference", precision: str = "fp32", batch: int = 1,
                             threads: Optional[int] = None, budget_ms: Optional[float] = None):
    """Two panels sharing the accuracy axis: ``model``'s sub-networks, published top-1 against
    GFLOPs (left, as in draw_accuracy_vs_flops) and against the ``latencies`` measured here (right,
    ms per batch of ``batch``; log scales), one line per keep ratio, each point labelled. The title
    names the setting the latencies were measured in (``engine``, ``precision``, ``batch``,
    ``threads``, default all CPUs) and this machine's CPU. ``budget_ms``: a vertical line at the
    budget and, ringed in both panels, the sub-network ppim.deploy.subnet_choice.choose picks for it
    (the one ppim-predict --latency-ms runs)."""
    Figure = require_matplotlib()
    from matplotlib.ticker import FuncFormatter

    from .deploy.subnet_choice import choose
    from .runtime import cpu_count, machine

    points = accuracy_vs_latency_points(model, latencies)
    name = model if isinstance(model, str) else model_name(model)
    fig = Figure(figsize=(LATENCY_SIZE[0] / 100, LATENCY_SIZE[1] / 100), dpi=100)
    flops_ax = fig.add_axes([0.05, 0.09, 0.43, 0.74])
    latency_ax = fig.add_axes([0.545, 0.09, 0.43, 0.74], sharey=flops_ax)
    choice = None if budget_ms is None else choose({p["label"]: p["ms"] for p in points},
                                                   {p["label"]: p["top1"] for p in points}, budget_ms)
    for ax, x in ((flops_ax, "gflops"), (latency_ax, "ms")):
        _keep_ratio_lines(ax, name, points, x, LATENCY_COLOURS)
        ax.set_xscale("log")
        values = [p[x] for p in points] + ([budget_ms] if x == "ms" and budget_ms is not None else [])
        ax.set_xlim(min(values) / 1.25, max(values) * 1.25)
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FuncFormatter(_log_tick))
        ax.grid(True, which="both", alpha=0.3)
        if choice is not None:
            picked = next(p for p in points if p["label"] == choice.key)
            verdict = f"{choice.key}, {choice.top1:.2f}%" if choice.fits else f"none fits: the fastest, {choice.key}"
            ax.plot([picked[x]], [picked["top1"]], "o", markersize=12, markerfacecolor="none", markeredgecolor="black",
                    markeredgewidth=1.5, gid="pick", label=f"pick for {budget_ms:g} ms: {verdict}")
    if budget_ms is not None:
        latency_ax.axvline(budget_ms, color="black", linestyle="--", linewidth=1, gid="budget",
                           label=f"budget {budget_ms:g} ms")
    for ax, x in ((flops_ax, "gflops"), (latency_ax, "ms")):
        place_labels(fig, ax, points, [LATENCY_COLOURS[p["label"].split("x")[1]] for p in points],
                     [(p[x], p["top1"]) for p in points], x=x)
        ax.legend(fontsize=8, loc="lower right")
    flops_ax.set_ylabel("published ImageNet top-1 (%)")
    flops_ax.set_xlabel("GFLOPs per image (multiply-accumulates, counted by ppim.flops; log scale)")
    latency_ax.set_xlabel(f"measured latency, ms per batch of {batch} (median; log scale)")
    flops_ax.set_title("against counted cost", fontsize=10)
    latency_ax.set_title("against latency measured on this machine", fontsize=10)
    m = machine()
    fig.suptitle(f"{name}: published top-1 of its sub-networks against cost and measured latency\n"
                 f"{engine} {precision}, batch {batch}, {threads or cpu_count()} threads, "
                 f"on {m.cpu_model or 'this CPU'} (Paddle {m.paddle_version})", fontsize=11)
    return fig


def _log_tick(value: float, _position=None) -> str:
    """Tick text of a log axis: 20, 30, 50, 100, 200 (not 2 x 10^1; the 4, 6 to 9 ticks unlabelled,
    where they would run into each other)."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if leading in (1, 2, 3, 5) else ""


def draw_benchmark_latency(rows: Sequence[Mapping[str, Any]], budget_ms: Optional[float] = None):
    """draw_accuracy_vs_latency for the rows of ppim.deploy.benchmark (a super model's sub-networks):
    at the smallest batch size measured, the engine and precision with the lowest total latency
    (the one to deploy). Returns (figure, its table: see ppim.deploy.subnet_choice.latency_tables)."""
    from .deploy.subnet_choice import latency_tables

    tables = latency_tables(rows)
    if not tables:
        raise InputError("no sub-network was timed: the accuracy-vs-latency picture needs a super model's "
                         "sub-networks measured (skipped and failed rows have no time)")
    smallest = min(t["batch"] for t in tables)
    table = min((t for t in tables if t["batch"] == smallest),  # the most sub-networks, then the fastest
                key=lambda t: (-len(t["latency_ms"]), sum(t["latency_ms"].values())))
    model = next(row["model"] for row in rows if row.get("subnet") is not None)
    fig = draw_accuracy_vs_latency(model, table["latency_ms"], engine=table["engine"], precision=table["precision"],
                                   batch=table["batch"], threads=table["threads"], budget_ms=budget_ms)
    return fig, table


def _hits(extent, xy: Tuple[float, float], radius: float) -> bool:
    """Whether a marker of ``radius`` pixels at ``xy`` touches the box ``extent``."""
    return (extent.x0 - radius < xy[0] < extent.x1 + radius) and (extent.y0 - radius < xy[1] < extent.y1 + radius)


def save_png(fig, path: Union[str, os.PathLike]) -> Path:
    """Write ``fig`` as PNG at its own pixel size, atomically (a temp file then a rename)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
    return path


def visualize(image: ImageSource, model: paddle.nn.Layer, output_dir: Union[str, os.PathLike],
              subnets: Union[str, Sequence[SubnetLike], None] = None) -> Dict[str, Path]:
    """Write every picture that applies to ``model`` into ``output_dir``: kept_tokens.png (super
    models; ``subnets``: "all", "224x0.5,160x0.7" or a list (ppim.subnet), default every published
    sub-network with keep ratio < 1 at the largest size), token_classes.png (models with an aux
    head) and accuracy_vs_gflops.png (always). The model runs in eval mode and keeps its own mode.
    Returns {picture kind: path}."""
    require_matplotlib()
    output_dir = Path(output_dir)
    crop, x = load_crop(image, model)
    written: Dict[str, Path] = {}
    offered = subnets_of(model)
    with eval_mode(model):
        if offered:
            full = max(offered).img_size
            chosen = (parse_subnets(subnets, model) if subnets is not None
                      else [s for s in offered if s.img_size == full and s.keep_ratio < 1])
            masks = {subnet: kept_token_masks(model, x, *subnet)[0] for subnet in chosen}
            written["kept_tokens"] = save_png(draw_kept_tokens(crop, masks, model.keep_blocks),
                                              output_dir / "kept_tokens.png")
        if getattr(model, "aux_head", None) is not None and model.num_classes > 0:
            names = imagenet_class_names() if model.num_classes == 1000 else []
            written["token_classes"] = save_png(draw_token_classes(crop, token_classes(model, x)[0], names),
                                                output_dir / "token_classes.png")
    written["accuracy_vs_gflops"] = save_png(draw_accuracy_vs_flops(), output_dir / "accuracy_vs_gflops.png")
    return written
