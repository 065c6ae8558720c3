"""The ppim-* console scripts that pip installs: each registered entry point imports, and the
scripts run for real from the environment's bin folder (CI's `pip install -e .`), or, in a checkout
run with PYTHONPATH, from a throwaway venv this checkout is installed into (offline, no deps)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

import ppim
from tiny import tiny_kwargs

ROOT = Path(__file__).resolve().parents[2]
#: The command-line modules: every module of ppim/cli with a main (launch and common are helpers).
CLI_MODULES = sorted(p.stem for p in (ROOT / "ppim" / "cli").glob("*.py") if "\ndef main(" in p.read_text())
TINY = tiny_kwargs(embed_dim=32, depth=1, num_heads=2)


def clean_env():
    """This environment without PYTHONPATH (the installed ppim must be the one found) or PPIM_DEBUG."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PPIM_DEBUG")}


def _installed_here(bin_dir: Path) -> bool:
    """This checkout is pip-installed in the running environment, scripts included."""
    from importlib import metadata

    try:
        metadata.distribution("ppim")
    except metadata.PackageNotFoundError:
        return False
    return (bin_dir / "ppim-eval").exists() and ROOT in Path(ppim.__file__).resolve().parents


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin folder) of an environment with this checkout installed by pip."""
    bin_dir = Path(sys.executable).parent
    if _installed_here(bin_dir):
        return Path(sys.executable), bin_dir
    venv = tmp_path_factory.mktemp("scripts") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A venv made from a venv sees the base interpreter's packages only: add this one's (paddle,
    # numpy, pip, setuptools), after the new venv's own site-packages.
    parents = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    Path(site, "parent-env.pth").write_text("\n".join(parents) + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                           "--no-build-isolation", "-e", str(ROOT)], cwd=venv, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python, venv / "bin"


def run(installed, script, *args, cwd=None):
    return subprocess.run([str(installed[1] / script), *map(str, args)], env=clean_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scripts(installed):
    """{console script: "module:function"} as the installed distribution registers them."""
    code = ("import json; from importlib import metadata; "
            "print(json.dumps({e.name: e.value for e in metadata.distribution('ppim').entry_points "
            "if e.group == 'console_scripts'}))")
    proc = subprocess.run([str(installed[0]), "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_every_command_line_module_is_an_installed_script(installed, scripts):
    """ppim.cli.<tool>:main is installed as ppim-<tool> (underscores as dashes), and nothing else is."""
    assert scripts == {f"ppim-{m.replace('_', '-')}": f"ppim.cli.{m}:main" for m in CLI_MODULES}
    for name in scripts:
        assert (installed[1] / name).is_file(), name


@pytest.mark.parametrize("module", CLI_MODULES)
def test_each_script_runs_its_help(installed, module):
    script = f"ppim-{module.replace('_', '-')}"
    proc = run(installed, script, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {script}"), proc.stderr[-2000:]


@pytest.fixture(scope="module")
def resolved(installed, scripts):
    """{script: the file its module was imported from, or the error}, in the installed environment."""
    code = ("import importlib, json, sys\nout = {}\n"
            f"for name, target in {scripts!r}.items():\n"
            "    module, function = target.split(':')\n"
            "    try:\n"
            "        m = importlib.import_module(module)\n"
            "        out[name] = m.__file__ if callable(getattr(m, function, None)) else 'no ' + function\n"
            "    except Exception as e:\n"
            "        out[name] = f'{type(e).__name__}: {e}'\n"
            "print(json.dumps(out))")
    env = clean_env()
    proc = subprocess.run([str(installed[0]), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_entry_points_resolve(resolved):
    """module:function of each script imports in the installed environment, from this checkout."""
    for name, found in resolved.items():
        assert (ROOT / "ppim") in Path(found).resolve().parents, (name, found)


def test_installed_scripts_run(installed, tmp_path):
    # ppim-predict on the shipped sample, with weights the test wrote
    model = ppim.create_model("lvvit_s", **TINY)
    checkpoint = tmp_path / "tiny.pdparams"
    paddle.save(model.state_dict(), str(checkpoint))
    proc = run(installed, "ppim-predict", "--model", "lvvit_s", "--model-kwargs", json.dumps(TINY),
               "--checkpoint", checkpoint, "--topk", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped = sorted(p.name for p in (ROOT / "ppim" / "assets" / "sample").glob("*/*.jpg"))
    assert sorted(line.split("/")[-1].split()[0] for line in proc.stdout.splitlines()
                  if "(true class:" in line) == shipped
    assert proc.stdout.count(" 3. ") == len(shipped)
    # an expected error from an installed script: one line, status 2
    proc = run(installed, "ppim-convert", tmp_path / "none.pth", tmp_path / "out.pdparams", "--model", "lvvit_s")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "none.pth" in proc.stderr and not (tmp_path / "out.pdparams").exists()


def test_install_adds_the_zlib_startup_line(installed):
    """The .pth that makes `import paddle` first safe on Paddle 2.6 (see ppim/_zlib.py)."""
    from ppim._zlib import STARTUP_LINE, STARTUP_PTH

    code = "import sys; print('zlib' in sys.modules)"
    env = clean_env()
    proc = subprocess.run([str(installed[0]), "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True"  # loaded at start-up, before any import of the program
    site = subprocess.run([str(installed[0]), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(site, STARTUP_PTH).read_text().strip() == STARTUP_LINE
