"""`import paddle` before `import ppim`, then export: Paddle 2.6 crashed with SIGSEGV in zlib's
inflateReset2 (libz bound to libpaddle's own zlib copy, see ppim/_zlib.py). As installed, ppim's
startup line loads zlib first and the export works; without it, ppim says what to do instead of
crashing later. Paddle 3 does not export zlib: both orders simply work."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

from ppim._zlib import STARTUP_LINE, STARTUP_PTH

ROOT = Path(__file__).resolve().parents[1]
PADDLE_26 = paddle.__version__.startswith("2.6")
EXPORT = """
import paddle
import ppim
from ppim.deploy import export
model = ppim.create_model("lvvit_s", img_size=32, embed_dim=16, depth=1, num_heads=2, stem_dim=8, num_classes=3)
print(export(model, {out!r}))
"""


def python(code, *flags):
    """Run code in a fresh interpreter; the checkout and this environment's packages on sys.path."""
    paths = [str(ROOT)] + [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    # -S leaves site.USER_SITE unset, which Paddle 2.6's import reads.
    prelude = f"import site, sys; sys.path[:0] = {paths!r}; site.getusersitepackages()\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *flags, "-c", prelude + code], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.smoke
def test_paddle_imported_first_then_export(tmp_path):
    # As installed: site-packages holds ppim's startup line (a folder with it, added like site-packages).
    site = tmp_path / "site"
    site.mkdir()
    (site / STARTUP_PTH).write_text(STARTUP_LINE + "\n")
    out = tmp_path / "export"
    proc = python(f"import site; site.addsitedir({str(site)!r})\n" + EXPORT.format(out=str(out)), "-S")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "ppim.json").is_file() and (out / "model.pdiparams").is_file()

    # Without the startup line (-S: no .pth runs at all).
    bare = python(EXPORT.format(out=str(tmp_path / "bare")), "-S")
    assert bare.returncode >= 0, f"killed by signal {-bare.returncode}"
    if PADDLE_26:
        assert bare.returncode == 1 and "Import ppim (or zlib) before paddle" in bare.stderr, bare.stderr[-3000:]
        # ... which is the truth: zlib itself is broken in such a process, with or without ppim.
        crash = python("import paddle, zlib\nzlib.decompress(zlib.compress(b'ppim' * 100))", "-S")
        assert crash.returncode == -signal.SIGSEGV
    else:
        assert bare.returncode == 0, bare.stderr[-3000:]
