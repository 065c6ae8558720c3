import shutil
import sys

import numpy as np
import pytest

from tiny import FIXTURES, ROOT  # this folder is on sys.path: pytest puts it there

sys.path.insert(0, str(FIXTURES / "ppim110"))
# The PyTorch reference models are shared with the benchmarks (benchmarks/torch_reference.py).
sys.path.insert(0, str(ROOT / "benchmarks"))


#: The real machine, then every simulated profile of ppim.runtime (see the ``machine`` fixture).
MACHINES = ("real", "avx2", "avx512", "avx512-bf16-amx", "gpu")


@pytest.fixture(scope="session")
def _canary_verdicts(tmp_path_factory):
    """Where the runtime canaries' verdicts (ppim.runtime.canary_verdict) are kept for the session."""
    return tmp_path_factory.mktemp("canaries")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _canary_verdicts):
    """Every test gets its own empty weights and export cache (outside its tmp_path), so no test sees
    another's files or the user's. Only the canaries' verdicts about this machine are shared (copied
    in and out), so the command lines the tests start do not each run them again."""
    home = tmp_path_factory.mktemp("ppim_home")
    monkeypatch.setenv("PPIM_HOME", str(home))
    shutil.copytree(_canary_verdicts, home / "runtime")
    yield
    for path in (home / "runtime").glob("canary-*.json"):
        if not (_canary_verdicts / path.name).exists():
            shutil.copy(path, _canary_verdicts / path.name)


@pytest.fixture(params=MACHINES)
def machine(request):
    """A machine-dependent test runs once per entry of MACHINES: on the machine running the suite
    ('real', whatever PPIM_SIMULATE_MACHINE says) and under each simulated profile, where every
    ppim.runtime check answers for that machine. Yields the ppim.runtime.Machine. A simulated
    machine decides, it does not run: run things for real only where the real machine has them."""
    from ppim import runtime

    if request.param == "real":
        yield runtime.machine()
        return
    with runtime.simulate(request.param) as simulated:
        yield simulated


@pytest.fixture
def rng():
    return np.random.default_rng(0)
