"""The package imports lazily and every console script pins its GPU under paddle.distributed.launch
before Paddle loads (checked in fresh interpreters: this one has Paddle loaded)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI_MODULES = sorted(p.stem for p in (ROOT / "ppim" / "cli").glob("*.py") if p.stem != "__init__")


def python(code, env=None):
    full = {k: v for k, v in os.environ.items() if k not in ("PADDLE_TRAINERS_NUM", "FLAGS_selected_gpus",
                                                             "CUDA_VISIBLE_DEVICES")}
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.smoke
def test_import_ppim_and_the_cli_modules_load_no_paddle():
    code = ("import sys, ppim\n"
            f"for name in {CLI_MODULES!r}:\n    __import__('ppim.cli.' + name)\n"
            "print([m for m in ('paddle', 'paddle.distributed', 'ppim.training', 'ppim.deploy', 'ppim.models')"
            " if m in sys.modules])")
    assert python(code).strip() == "[]"


def test_lazy_package_still_offers_the_public_api():
    code = ("import sys, ppim\nfrom ppim import lvvit_t, create_model\n"
            "assert lvvit_t is ppim.lvvit_t and ppim.create_model is create_model\n"
            "assert 'super_lvvit_s' in ppim.list_models() and callable(ppim.flops.count)\n"
            "assert ppim.deploy.export.__module__ == 'ppim.deploy.exporting' and 'lvvit_s' in ppim.__all__\n"
            "ns = {}\nexec('from ppim import *', ns)\nassert 'lvvit_m' in ns and 'create_transforms' in ns\n"
            "try:\n    ppim.no_such_thing\nexcept AttributeError:\n    print('ok')\n")
    assert python(code).strip() == "ok"


CASES = [({"PADDLE_TRAINERS_NUM": "4", "FLAGS_selected_gpus": "3"}, ["3", "0"]),
         ({"PADDLE_TRAINERS_NUM": "2", "FLAGS_selected_gpus": "1", "CUDA_VISIBLE_DEVICES": "4,6"}, ["6", "0"]),
         ({"PADDLE_TRAINERS_NUM": "2", "FLAGS_selected_gpus": "2", "CUDA_VISIBLE_DEVICES": "4,6"}, ["4,6", "2"]),
         ({"PADDLE_TRAINERS_NUM": "1", "FLAGS_selected_gpus": "1"}, [None, "1"]),
         ({"PADDLE_TRAINERS_NUM": "2"}, [None, None])]  # CPU (gloo): nothing to pin


@pytest.mark.parametrize("env,expected", CASES)
def test_pin_launch_gpu_makes_the_rank_s_gpu_device_0(env, expected):
    code = ("import json, os\nfrom ppim.cli.launch import pin_launch_gpu\npin_launch_gpu()\n"
            "print(json.dumps([os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('FLAGS_selected_gpus')]))")
    assert json.loads(python(code, env)) == expected


def test_pinning_waits_for_nothing_once_paddle_is_loaded():
    code = ("import json, os, paddle\nfrom ppim.cli.launch import pin_launch_gpu\nprint(pin_launch_gpu())")
    assert python(code, CASES[0][0]).strip() == "False"


@pytest.mark.parametrize("tool", ["train", "eval", "make_token_labels"])
def test_console_scripts_pin_before_paddle_loads(tool):
    # As `python -m paddle.distributed.launch ... ppim-train ...` starts each rank (what tools/train.py did).
    code = (f"import json, os, sys\nfrom ppim.cli.{tool} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps([os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('FLAGS_selected_gpus')]))")
    out = python(code, {"PADDLE_TRAINERS_NUM": "2", "FLAGS_selected_gpus": "1", "CUDA_VISIBLE_DEVICES": "4,6"})
    assert json.loads(out.splitlines()[-1]) == ["6", "0"]
