# First, before any test module imports torch: the package sets OpenMP's short spin, which OpenMP
# reads once, as torch loads (charrnn_torch/__init__.py). Without it every pytest worker's idle
# OpenMP threads spin against the other workers' and the processes they start, and a test that
# trains in its worker runs ten times slower under -n.
import charrnn_torch  # noqa: F401  isort: skip

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


_LINE = "the quick brown fox jumps over the lazy dog. "
TINY_TEXT = "".join(_LINE[i:] + _LINE[:i] + "\n" for i in range(40)) * 10


@pytest.fixture
def tiny_text():
    """A small corpus with a fixed, small vocabulary: cheap to train on in a test."""
    return TINY_TEXT


def pytest_collection_modifyitems(items):
    """Modules holding a slow test run first, each module's tests still together and in order (its
    fixtures are set up once). With -n and --dist worksteal (pyproject's addopts), the long tests
    start at once and the short ones fill in around them, instead of one long test starting last
    and running alone."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)  # a stable sort: the order is kept


def run_script(name, *args, cwd=None, env=None, timeout=300):
    import subprocess
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=full_env,
                          timeout=timeout)


def tiny_overrides(corpus, out_dir, **extra):
    """Overrides for a fast CPU run on a test corpus."""
    base = {
        "data.path": corpus, "out_dir": out_dir, "device": "cpu",
        "model.hidden_size": 32, "model.impl": "fused",
        "train.batch_size": 4, "train.seq_len": 16, "train.max_steps": 30, "train.lr": 0.01,
        "train.eval_interval": 10, "train.log_interval": 5, "train.sample_interval": 10,
        "train.sample_length": 40, "train.lr_schedule": "cosine",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def corpus_file(tmp_path, tiny_text):
    p = tmp_path / "corpus.txt"
    p.write_text(tiny_text)
    return p


def read_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def rel_err(a, b):
    """Largest absolute difference, relative to the larger of the two arrays' largest magnitude."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300)


def central_differences(loss, array, eps=1e-5):
    """d loss() / d array by central differences, perturbing array in place one entry at a time."""
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        old = array[i]
        array[i] = old + eps
        lp = loss()
        array[i] = old - eps
        lm = loss()
        array[i] = old
        grad[i] = (lp - lm) / (2 * eps)
    return grad


# ---------------------------------------------------------------- the browser tests' Chromium

CHROMIUM = "/usr/bin/chromium"  # Debian's: nothing downloads a browser build
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def require_browser():
    """Skip without Chromium or Playwright, unless CHARRNN_REQUIRE_BROWSER=1 (set by .ci/run): then fail."""
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"no {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "no playwright (pip install -e '.[dev]')"
    if missing and os.environ.get("CHARRNN_REQUIRE_BROWSER") == "1":
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)


@contextlib.contextmanager
def chromium(viewport):
    """A headless Chromium context on a throwaway profile, driven by Playwright."""
    require_browser()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport=viewport)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def watch(page):
    """What a page logs as errors and every URL it requests, from now on."""
    seen = {"errors": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    return seen


@pytest.fixture
def unwritable_dir(tmp_path):
    """(a directory nothing here can write into, the reason a write there fails): read-only by its
    mode; for root, whom modes do not stop, a read-only tmpfs mounted there (skipped where it
    cannot be mounted)."""
    import subprocess

    d = tmp_path / "locked"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d, "Permission denied"
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root, and a read-only filesystem cannot be mounted to write into")
    try:
        yield d, "Read-only file system"
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
