"""The generated tables of README.md and docs/ agree with the registry and ppim.flops
(tools/make_docs.py --check), and the hand-written pages around them stay consistent."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ppim

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "tools" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_docs = _load_make_docs()


@pytest.mark.smoke
def test_generated_tables_are_up_to_date():
    outdated = make_docs.stale(ROOT)
    assert not outdated, (f"out-of-date tables in {', '.join(str(p.relative_to(ROOT)) for p in outdated)}: "
                          "run python tools/make_docs.py")


def test_check_command_passes_on_the_checkout():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_check_fails_and_rewrite_fixes_a_stale_table(tmp_path, capsys):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("*.ipynb"))
    page = tmp_path / "docs" / "models" / "supervit_en.md"
    page.write_text(page.read_text(encoding="utf-8").replace("| 73.75 |", "| 99.99 |"), encoding="utf-8")
    assert make_docs.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "-| 8x8 (128) | 99.99 |" in out and "+| 8x8 (128) | 73.75 |" in out
    assert make_docs.main(["--root", str(tmp_path)]) == 0
    assert page.read_text(encoding="utf-8") == (DOCS / "models" / "supervit_en.md").read_text(encoding="utf-8")
    assert make_docs.main(["--check", "--root", str(tmp_path)]) == 0


def test_prose_outside_the_markers_is_kept():
    text = "intro\n<!-- ppim:table subnet_top1 super_deit_s -->\nold\n<!-- /ppim:table -->\noutro\n"
    new = make_docs.render(text)
    assert new.startswith("intro\n<!-- ppim:table subnet_top1 super_deit_s -->\n| token grid")
    assert new.endswith("| 14x14 (224) | 79.95 | 80.50 | 80.62 |\n<!-- /ppim:table -->\noutro\n")
    assert make_docs.render(new) == new


@pytest.mark.parametrize("text, message", [
    ("<!-- ppim:table models -->\nno end\n", "without"),
    ("<!-- /ppim:table -->\n", "without an opening"),
    ("<!-- ppim:table nonsense -->\n<!-- /ppim:table -->\n", "unknown table"),
    ("<!-- ppim:table family -->\n<!-- /ppim:table -->\n", "argument"),
    ("<!-- ppim:table family lvvit lang=fr -->\n<!-- /ppim:table -->\n", "lang"),
    ("<!-- ppim:table models -->\n<!-- ppim:table models -->\n<!-- /ppim:table -->\n", "nested"),
])
def test_bad_markers_are_errors(text, message):
    with pytest.raises(ValueError, match=message):
        make_docs.render(text, "page.md")


def _table_rows(text: str, marker: str):
    block = text.split(marker, 1)[1].split("<!-- /ppim:table -->", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines() if line.startswith("|")][2:]


def test_readme_lists_every_model_with_counted_params_and_flops():
    from ppim import flops

    rows = {row[0].strip("`"): row for row in _table_rows((ROOT / "README.md").read_text(encoding="utf-8"),
                                                          "<!-- ppim:table models -->")}
    assert sorted(rows) == ppim.list_models()
    for name, row in rows.items():
        stats = flops.count(flops.model_for_counting(name))
        assert float(row[2]) == round(stats["params"] / 1e6, 1)
        assert float(row[3]) == round(stats["flops"] / 1e9, 1)
    assert rows["lvvit_s"][3:6] == ["6.6", "83.17", "95.87"]


def test_family_pages_cover_their_models_and_published_accuracy():
    for family, page in (("lvvit", "lvvit"), ("supervit", "supervit")):
        for suffix in ("", "_en"):
            text = (DOCS / "models" / f"{page}{suffix}.md").read_text(encoding="utf-8")
            rows = {row[0]: row for row in _table_rows(text, f"<!-- ppim:table family {family} -->")}
            assert list(rows) == make_docs.family_models(family)
            for name, row in rows.items():
                weights = ppim.get_model_cfg(name)["weights"]
                assert row[3] == (f"{weights['top1']:.2f}" if weights.get("top1") is not None else "-")
                assert weights["source_url"] in row[5]
    text = (DOCS / "models" / "supervit.md").read_text(encoding="utf-8")
    for name in ("super_deit_s", "super_lvvit_s"):
        grid = _table_rows(text, f"<!-- ppim:table subnet_top1 {name} lang=zh -->")
        top1 = ppim.get_model_cfg(name)["weights"]["subnet_top1"]
        assert [row[0] for row in grid] == ["8x8 (128)", "10x10 (160)", "12x12 (192)", "14x14 (224)"]
        assert [float(v) for row in grid for v in row[1:]] == list(top1.values())


def test_chinese_and_english_pages_have_the_same_tables():
    for page in ("lvvit", "supervit"):
        markers = []
        for suffix in ("", "_en"):
            text = (DOCS / "models" / f"{page}{suffix}.md").read_text(encoding="utf-8")
            markers.append([re.sub(r"\s*lang=\w+", "", m) for m in make_docs.BEGIN.findall(text)])
        assert markers[0] == markers[1] and markers[0]


def test_relative_links_resolve():
    for path in make_docs.doc_files(ROOT):
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            assert (path.parent / target.split("#")[0]).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_readme_quick_start_runs(tmp_path):
    """The Quick start block: its first line's command evaluates on the shipped sample (weights put in
    the cache by hand, as on an offline machine; random ones of a one-block lvvit_s, so only that it
    runs is checked), and its second line is the test line CI runs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first, second = block.strip().splitlines()
    command = first.split("&&", 1)[1].split()
    assert command[:2] == ["python", "tools/eval.py"] and "--pretrained" in command
    home = tmp_path / "home"
    weights = home / "weights" / ppim.get_model_cfg("lvvit_s")["weights"]["file_name"]
    weights.parent.mkdir(parents=True)
    paddle = pytest.importorskip("paddle")
    paddle.save(ppim.lvvit_s(depth=1).state_dict(), str(weights))
    env = {**os.environ, "PPIM_HOME": str(home)}
    proc = subprocess.run([sys.executable, *command[1:], "--model-kwargs", '{"depth": 1}', "-j", "0", "--no-progress"],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top-1" in proc.stdout + proc.stderr
    assert second in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
