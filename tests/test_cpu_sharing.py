"""Proves the CPU-sharing default: every way in (the charrnn command's module, python -m
charrnn_torch, scripts/, import charrnn_torch) sets GOMP_SPINCOUNT to the package's SPIN_COUNT
before torch is imported, so that OpenMP's idle threads spin briefly, then sleep, instead of
spinning on a CPU another process needs; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept;
and OpenMP itself took it (libgomp, as torch's Linux wheels ship it, reports its spin count under
OMP_DISPLAY_ENV=VERBOSE). Each case is a fresh interpreter: OpenMP reads it once, as torch loads.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# Records OMP_WAIT_POLICY at the first import of torch, then runs one way in.
PROBE = r"""
import builtins, os, runpy, sys
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if (name == "torch" or name.startswith("torch.")) and not seen:
        seen.append(os.environ.get("GOMP_SPINCOUNT"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
how = sys.argv[1]
if how == "import":
    import charrnn_torch
elif how == "cli":
    from charrnn_torch.cli import main
    main(["--version"])
else:
    sys.argv = [how, "--help"]
    try:
        runpy.run_path(how, run_name="__main__") if how.endswith(".py") else runpy.run_module(how, run_name="__main__")
    except SystemExit:
        pass
print("at torch import:", seen[0], file=sys.stderr)
"""
WAYS = ["import", "cli", "charrnn_torch", str(ROOT / "scripts" / "train.py")]


def probe(how, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(PYTHONPATH=str(ROOT), OMP_DISPLAY_ENV="VERBOSE", **env)
    r = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, env=full, timeout=120)
    assert r.returncode == 0, r.stderr
    at_import = re.search(r"^at torch import: (\S+)$", r.stderr, re.M).group(1)
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", r.stderr)
    return at_import, spin and int(spin.group(1))


@pytest.mark.parametrize("how", WAYS)
def test_a_short_spin_is_set_before_torch_loads(how):
    from charrnn_torch import SPIN_COUNT
    at_import, spin = probe(how)
    assert at_import == SPIN_COUNT
    if spin is not None:  # libgomp said what it took
        assert spin == int(SPIN_COUNT)


@pytest.mark.parametrize("env, want", [({"OMP_WAIT_POLICY": "ACTIVE"}, 30_000_000_000),
                                        ({"OMP_WAIT_POLICY": "passive"}, 0), ({"GOMP_SPINCOUNT": "77"}, 77)])
def test_a_users_own_value_is_kept(env, want):
    _, spin = probe("cli", **env)
    if spin is not None:
        assert spin == want


def test_the_control_torch_alone_spins():
    """Without the package, torch's OpenMP spins (libgomp's default count): what the default changes."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, timeout=120,
                       env=dict(env, OMP_DISPLAY_ENV="VERBOSE"))
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", r.stderr)
    if spin is None:
        pytest.skip("this torch's OpenMP is not libgomp: it does not report its spin count")
    assert int(spin.group(1)) > 0
