import sys

import numpy as np
import pytest

from tiny import FIXTURES, ROOT  # this folder is on sys.path: pytest puts it there

sys.path.insert(0, str(FIXTURES / "ppim110"))
# The PyTorch reference models are shared with the benchmarks (benchmarks/torch_reference.py).
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty weights cache, so no test sees another's files or the user's."""
    monkeypatch.setenv("PPIM_HOME", str(tmp_path / "ppim_home"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
