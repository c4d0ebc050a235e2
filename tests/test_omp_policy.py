"""The package sets OpenMP's wait policy before torch loads (``explorer/__init__.py``): spinning
waiters made a 7 s attack take > 100 s on the shared 2-core CPU; a value the user set is kept."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import os; import explorer, torch; "
         "print(os.environ['OMP_WAIT_POLICY'], 'torch' in __import__('sys').modules)")


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_wait_policy_is_passive_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [expected, "True"]


def test_the_policy_is_set_before_anything_imports_torch():
    """libgomp reads the variable once, when torch loads it: the assignment must come first."""
    src = (ROOT / "explorer" / "__init__.py").read_text()
    assert 0 < src.index('setdefault("OMP_WAIT_POLICY", "PASSIVE")') < src.index("from .")
