"""Regenerate the tables in README.md and docs/ from the model registry and ppim.flops.

    python tools/make_docs.py            # rewrite every generated table in place
    python tools/make_docs.py --check    # exit 1 (and show a diff) if any table is out of date
    python tools/make_docs.py --images   # also redraw docs/images/accuracy_vs_gflops.png (matplotlib)

A generated table sits between two markers; everything outside them is hand-written prose:

    <!-- ppim:table KIND [ARG] [lang=zh] -->
    ...generated...
    <!-- /ppim:table -->

KINDs: models (the README table of every model), weights (the file each model needs offline), family FAMILY (the model table of a family page),
transforms FAMILY (the eval transforms of its models, as paddle.vision code), subnet_top1 MODEL (the
published top-1 of the 12 sub-networks), subnet_flops MODEL (their cost). Params are counted from
the model, FLOPs (multiply-accumulates, the papers' convention) by ppim.flops on models built
without weights, accuracy is the published figures of the registry cfgs.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import ppim  # noqa: E402
from ppim import flops  # noqa: E402

BEGIN = re.compile(r"<!-- ppim:table ([^>]*?) -->")
END = "<!-- /ppim:table -->"

FAMILIES = {"lvvit": "LV-ViT", "supervit": "SuperViT"}
CURVE = "docs/images/accuracy_vs_gflops.png"  # the one picture drawn from published figures only

_TEXT = {
    "en": {"grid": "token grid \\ keep ratio", "cost": "GFLOPs (share of the full sub-network)",
           "tokens": "Tokens at {size} (after blocks {blocks})", "keep": "keep {ratio}"},
    "zh": {"grid": "token 网格 \\ 保留比例", "cost": "GFLOPs（占完整子网络的比例）",
           "tokens": "输入 {size} 时的 token 数（第 {blocks} 个 block 之后）", "keep": "保留 {ratio}"},
}


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def model_stats(name: str) -> Dict[str, int]:
    """{"params", "flops"} of a registered model at its cfg's input size (lazy build: no weights)."""
    return flops.count(flops.model_for_counting(name))


@lru_cache(maxsize=None)
def subnet_costs(name: str) -> Tuple[dict, ...]:
    return tuple(flops.subnet_costs(name))


def family_models(family: str) -> List[str]:
    names = [n for n in ppim.list_models() if ppim.get_model_cfg(n)["architecture"] == family]
    if not names:
        raise ValueError(f"no registered models of family {family!r}")
    # by size class, then input size (lvvit_t, lvvit_s, lvvit_s_384, lvvit_m, ...)
    order = {"t": 0, "s": 1, "m": 2, "l": 3}

    def key(name: str):
        cfg = ppim.get_model_cfg(name)
        parts = name.split("_")
        return (parts[0], order.get(parts[1], 9) if len(parts) > 1 else 9, cfg["crop"])

    return sorted(names, key=key)


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _g(value: int, digits: int = 1) -> str:
    return f"{value / 1e9:.{digits}f}"


def _m(value: int) -> str:
    return f"{value / 1e6:.1f}"


def _links(cfg: dict) -> str:
    weights = cfg["weights"]
    links = []
    if weights.get("format") == "pdparams" and weights.get("url"):
        links.append(f"[pdparams]({weights['url']})")
    if weights.get("source_url"):
        links.append(f"[pth]({weights['source_url']})")
    return " / ".join(links) or "-"


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def table_models(lang: str) -> List[str]:
    """Every registered model: input, params, FLOPs, published accuracy, where the weights come from."""
    rows = []
    found = {ppim.get_model_cfg(name)["architecture"] for name in ppim.list_models()}
    for family in [f for f in FAMILIES if f in found] + sorted(found - set(FAMILIES)):
        for name in family_models(family):
            cfg, stats = ppim.get_model_cfg(name), model_stats(name)
            weights = cfg["weights"]
            source = ("ppim .pdparams" if weights.get("format") == "pdparams"
                      else "official PyTorch release" if "github.com" in (weights.get("source_url") or "")
                      else "official PyTorch (Google Drive)")
            rows.append([f"`{name}`", str(cfg["crop"]), _m(stats["params"]), _g(stats["flops"]),
                         _num(weights.get("top1")), _num(weights.get("top5")), source])
    return _table(["model", "input", "params (M)", "FLOPs (G)", "top-1", "top-5", "weights"], rows)


def table_family(family: str, lang: str) -> List[str]:
    """ppim 1.x's model table: | Model | Params | FLOPs | Top-1 | Top-5 | Pretrained Model |."""
    rows = []
    for name in family_models(family):
        cfg, stats = ppim.get_model_cfg(name), model_stats(name)
        weights = cfg["weights"]
        rows.append([name, f"{_m(stats['params'])}M", f"{_g(stats['flops'])}G",
                     _num(weights.get("top1")), _num(weights.get("top5")), _links(cfg)])
    return _table(["Model", "Params", "FLOPs", "Top-1 (%)", "Top-5 (%)", "Pretrained Model"], rows)


def table_transforms(family: str, lang: str) -> List[str]:
    """The eval transforms of a family as paddle.vision code, one block per (resize, crop)."""
    groups: Dict[Tuple[int, int, str], List[str]] = {}
    for name in family_models(family):
        cfg = ppim.get_model_cfg(name)
        groups.setdefault((cfg["resize"], cfg["crop"], cfg["interpolation"]), []).append(name)
    comment = ("# 图像后端: PIL; 插值方式: bicubic; 与 ppim.create_transforms(name) 相同"
               if lang == "zh" else "# image backend: PIL; interpolation: bicubic; same as ppim.create_transforms(name)")
    lines = ["```python", "import paddle.vision.transforms as T", "", comment]
    cfg = ppim.get_model_cfg(family_models(family)[0])
    mean = ", ".join(f"{v:g}" for v in cfg["mean"])
    std = ", ".join(f"{v:g}" for v in cfg["std"])
    crops = [crop for _, crop, _ in groups]
    for (resize, crop, interpolation), names in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        variable = f"transforms_{crop}" if crops.count(crop) == 1 else f"transforms_{resize}_{crop}"
        lines += ["", "# " + ", ".join(names),
                  f"{variable} = T.Compose([",
                  f"    T.Resize({resize}, interpolation='{interpolation}'),",
                  f"    T.CenterCrop({crop}),",
                  "    T.ToTensor(),",
                  f"    T.Normalize(mean=[{mean}], std=[{std}]),",
                  "])"]
    return lines + ["```"]


def _subnet_grid(name: str, cell, lang: str) -> List[str]:
    model = flops.model_for_counting(name)
    patch = model.patch_size
    header = [_TEXT[lang]["grid"]] + [f"{r:g}" for r in model.keep_ratios]
    rows = []
    for size in model.img_sizes:
        grid = size // patch
        rows.append([f"{grid}x{grid} ({size})"] + [cell(size, ratio) for ratio in model.keep_ratios])
    return _table(header, rows)


def table_subnet_top1(name: str, lang: str) -> List[str]:
    """Published top-1 (%) of the 12 sub-networks: rows token grid, columns keep ratio."""
    top1 = ppim.get_model_cfg(name)["weights"]["subnet_top1"]
    return _subnet_grid(name, lambda size, ratio: _num(top1.get(f"{size}x{float(ratio)}")), lang)


def table_subnet_flops(name: str, lang: str) -> List[str]:
    """GFLOPs (MACs) of the 12 sub-networks and their share of the full one, plus the token counts."""
    costs = {(c["img_size"], c["keep_ratio"]): c for c in subnet_costs(name)}

    def cell(size: int, ratio: float) -> str:
        cost = costs[(size, float(ratio))]
        return f"{_g(cost['flops'], 2)} ({cost['ratio_to_full']:.0%})"

    lines = _subnet_grid(name, cell, lang)
    model = flops.model_for_counting(name)
    size = max(model.img_sizes)
    text = _TEXT[lang]
    schedules = []
    for ratio in model.keep_ratios:
        counts = flops.token_schedule(model, size, ratio)
        steps = [counts[0]] + ([counts[i + 1] for i in model.keep_blocks] if ratio < 1 else [])
        schedules.append(text["keep"].format(ratio=f"{ratio:g}") + ": " + " → ".join(str(s) for s in steps))
    blocks = ", ".join(str(i) for i in model.keep_blocks)
    stop, colon, semicolon = ("。", "：", "；") if lang == "zh" else (". ", ": ", "; ")
    return lines + ["", text["cost"] + stop + text["tokens"].format(size=size, blocks=blocks) + colon
                    + semicolon.join(schedules) + stop.strip()]


def table_weights(lang: str) -> List[str]:
    """Offline use: the file each model loads from $PPIM_HOME/weights and where to download it."""
    rows = []
    for name in ppim.list_models():
        weights = ppim.get_model_cfg(name)["weights"]
        if "drive.google.com" in (weights.get("source_url") or ""):
            where = f"[Google Drive]({weights['source_url']})" + (" (手动下载见下文)" if lang == "zh" else " (by hand: see below)")
        else:
            where = f"[{weights['format']}]({weights['url']})"
        rows.append([f"`{name}`", f"`{weights['file_name']}`", where])
    header = (["模型", "放进 `$PPIM_HOME/weights/` 的文件", "下载地址"] if lang == "zh"
              else ["model", "file in `$PPIM_HOME/weights/`", "download"])
    return _table(header, rows)


KINDS = {
    "models": (0, table_models),
    "weights": (0, table_weights),
    "family": (1, table_family),
    "transforms": (1, table_transforms),
    "subnet_top1": (1, table_subnet_top1),
    "subnet_flops": (1, table_subnet_flops),
}


def render_table(spec: str) -> List[str]:
    """The lines of the table a marker's spec ("KIND [ARG] [lang=zh]") asks for."""
    words = spec.split()
    lang = "en"
    args = []
    for word in words[1:]:
        if word.startswith("lang="):
            lang = word.split("=", 1)[1]
        else:
            args.append(word)
    if not words or words[0] not in KINDS:
        raise ValueError(f"unknown table {spec!r}; kinds: {', '.join(KINDS)}")
    if lang not in _TEXT:
        raise ValueError(f"unknown lang {lang!r} in {spec!r}; langs: {', '.join(_TEXT)}")
    nargs, fn = KINDS[words[0]]
    if len(args) != nargs:
        raise ValueError(f"table {words[0]!r} takes {nargs} argument(s), got {spec!r}")
    return fn(*args, lang)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def render(text: str, source: str = "<text>") -> str:
    """``text`` with every marked table regenerated."""
    lines = text.split("\n")
    out: List[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = BEGIN.fullmatch(line.strip())
        out.append(line)
        index += 1
        if not match:
            if line.strip() == END:
                raise ValueError(f"{source}:{index}: {END} without an opening marker")
            continue
        start = index
        while index < len(lines) and lines[index].strip() != END:
            if BEGIN.fullmatch(lines[index].strip()):
                raise ValueError(f"{source}:{index + 1}: nested table marker (is {END} missing after line {start}?)")
            index += 1
        if index == len(lines):
            raise ValueError(f"{source}:{start}: table marker without {END}")
        try:
            out.extend(render_table(match.group(1)))
        except ValueError as e:
            raise ValueError(f"{source}:{start}: {e}") from None
        out.append(lines[index])
        index += 1
    return "\n".join(out)


def doc_files(root: Path = ROOT) -> List[Path]:
    """README.md and every Markdown file under docs/."""
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


def stale(root: Path = ROOT) -> Dict[Path, Tuple[str, str]]:
    """{path: (current text, regenerated text)} of the files whose tables are out of date."""
    result = {}
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        new = render(text, str(path.relative_to(root)))
        if new != text:
            result[path] = (text, new)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated table differs from the registry")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose docs to process (default: this one)")
    parser.add_argument("--images", action="store_true",
                        help=f"also redraw {CURVE} from the registry (needs matplotlib)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.images:
        from ppim import visualize

        visualize.save_png(visualize.draw_accuracy_vs_flops(), root / CURVE)
        print(f"drew {CURVE}")
    try:
        outdated = stale(root)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, (text, new) in outdated.items():
        rel = str(path.relative_to(root))
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{rel} (docs)", f"{rel} (generated)"))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"updated {rel}")
    if args.check and outdated:
        print(f"\n{len(outdated)} file(s) have out-of-date tables: run python tools/make_docs.py",
              file=sys.stderr)
        return 1
    if not outdated:
        print("docs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
