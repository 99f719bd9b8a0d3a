"""Proves impl fused_cpp, the LSTM's element-wise step maths in compiled kernels (compiled.py,
lstm_kernel.cpp): they build where a C++ toolchain is (required where CHARRNN_REQUIRE_CPP=1, as in
CI); in float32 they match fused's aten kernels to 1e-5, at a width that is no multiple of any
vector length, and their own exp and tanh match torch's over the whole range of inputs (tanh to a
few float32 roundings, relatively, near 0); they refuse buffers of the wrong shape or dtype; and
where they cannot be built, fused_cpp warns once and runs fused's kernels, bit for bit the same as
fused. The warning is one line, why and what runs instead, with no line of torch's and no
"building" line for a build that never starts; a lock left by a killed build is cleared, a live
build is waited for at most BUILD_WAIT_S, and a lock no charrnn build claims is given up once it
is older than that: never a hang. Their float64 gradients are proved against the numpy reference
to 1e-9 with every other impl's, in test_gated_cells.py.
"""
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.utils.cpp_extension

from charrnn_torch import CharRNN
from charrnn_torch.model import compiled
from charrnn_torch.model.cells import cross_entropy
from conftest import ROOT

V, H, B, T, L = 11, 37, 5, 9, 2  # H = 37: every vector loop has a tail


def toolchain():
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


@pytest.fixture
def kernels():
    if compiled.lstm_kernels() is None:
        if os.environ.get("CHARRNN_REQUIRE_CPP") == "1":
            pytest.fail("CHARRNN_REQUIRE_CPP=1 but the compiled LSTM kernels did not build")
        pytest.skip("no C++ toolchain to build the compiled LSTM kernels")
    return compiled.lstm_kernels()


def test_kernels_build_where_a_toolchain_is():
    if not toolchain() and os.environ.get("CHARRNN_REQUIRE_CPP") != "1":
        pytest.skip("no C++ compiler or ninja")
    assert compiled.lstm_kernels() is not None


def run(impl):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl, cell="lstm").build_kernels()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    logits, (h, c) = model(x)
    (cross_entropy(logits, y, "sum") + (c * c).sum()).backward()
    return [logits.detach(), h.detach(), c.detach()] + [p.grad for p in model.parameters()]


def test_float32_matches_fused(kernels):
    for a, b in zip(run("fused"), run("fused_cpp")):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


def test_activations_over_their_whole_range(kernels):
    # float32's exp and tanh are the kernel's own polynomials: check them where they saturate and
    # overflow, and near 0, where tanh must keep its relative accuracy
    tiny = torch.logspace(-30, 0, 301)
    x = torch.cat([torch.linspace(-120, 120, 24001), tiny, -tiny, torch.tensor([0.0, float("inf"), -float("inf")])])
    n = x.numel()
    a = torch.cat([x, x, x, x]).view(1, 4 * n)
    c_prev, c, tc, h = torch.zeros(1, n), torch.empty(1, n), torch.empty(1, n), torch.empty(1, n)
    kernels.forward_step(a, c_prev, c, tc, h)
    i, f, g, o = a.view(4, n)
    for got, want in ((i, x.sigmoid()), (f, x.sigmoid()), (o, x.sigmoid()), (g, x.tanh()),
                      (tc, (x.sigmoid() * x.tanh()).tanh())):
        assert not got.isnan().any() and (got - want).abs().max() <= 4e-7
    near_0 = x.abs() < 0.7
    assert ((g - x.tanh())[near_0].abs() <= 4e-7 * x.tanh()[near_0].abs()).all()
    nan = torch.full((1, 4), float("nan"))
    kernels.forward_step(nan, torch.zeros(1, 1), c[:, :1], tc[:, :1], h[:, :1])
    assert nan.isnan().all() and h[0, 0].isnan()


def test_kernels_refuse_wrong_buffers(kernels):
    a, s = torch.zeros(B, 4 * H), torch.zeros(B, H)
    with pytest.raises(RuntimeError, match="c_prev"):
        kernels.forward_step(a, torch.zeros(B, H + 1), s, s.clone(), s.clone())
    with pytest.raises(RuntimeError, match="gates' dtype"):
        kernels.forward_step(a, s.double(), s, s.clone(), s.clone())
    with pytest.raises(RuntimeError, match="unit stride"):
        kernels.backward_step(a, s, s, torch.zeros(H, B).t(), s, a.clone())  # dh's rows are strided


INSTEAD = "; running fused's kernels instead (the same maths, not compiled)\n"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A build directory of its own (TORCH_EXTENSIONS_DIR), nothing cached; torch's loader replaced
    by one that, like torch's, would wait for as long as its lock exists (here: fails after 20 s);
    BUILD_WAIT_S 5 s."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "BUILD_WAIT_S", 5)  # a test that waits, waits seconds
    build_dir = tmp_path / compiled.build_name()[0]
    loads = []

    def load(**kwargs):
        deadline = time.monotonic() + 20
        while (build_dir / "lock").exists():
            assert time.monotonic() < deadline, "torch's loader would wait on its lock forever"
            time.sleep(0.05)
        loads.append(kwargs["build_directory"])
        return "the kernels"
    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    compiled.lstm_kernels.cache_clear()
    yield build_dir, loads
    compiled.lstm_kernels.cache_clear()  # the next user builds (or loads) the real kernels


def gone_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leave(build_dir, pid=None, age_s=0):
    """What a build leaves in build_dir: torch's lock (age_s old) and, for pid, charrnn's owner file."""
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()
    os.utime(build_dir / "lock", (time.time() - age_s, time.time() - age_s))
    if pid is not None:
        (build_dir / compiled.OWNER).write_text(f"{socket.gethostname()}-{pid}")


def test_a_lock_left_by_a_killed_build_is_cleared(fresh, capsys):
    build_dir, loads = fresh
    leave(build_dir, pid=gone_pid())
    assert compiled.lstm_kernels() == "the kernels" and loads == [str(build_dir)]
    assert not (build_dir / "lock").exists() and not (build_dir / compiled.OWNER).exists()
    assert capsys.readouterr().err == (f"impl fused_cpp: building the compiled LSTM kernels into {build_dir} "
                                       f"(once, about a minute)\n")


def test_a_live_build_is_waited_for_at_most_build_wait_s(fresh, capsys, monkeypatch):
    build_dir, loads = fresh
    monkeypatch.setattr(compiled, "BUILD_WAIT_S", 1)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leave(build_dir, pid=alive.pid)
        assert compiled.lstm_kernels() is None and loads == []
    finally:
        alive.kill()
        alive.wait()
    host = socket.gethostname()
    assert capsys.readouterr().err == (
        f"impl fused_cpp: waiting for another build of the LSTM kernels (process {alive.pid} on {host})\n"
        f"warning: impl fused_cpp: another build of the LSTM kernels (process {alive.pid} on {host}) has held "
        f"{build_dir} for over 1 s" + INSTEAD)


def test_a_lock_no_build_claims_is_given_up_once_old(fresh, capsys):
    build_dir, loads = fresh
    leave(build_dir, age_s=3600)
    assert compiled.lstm_kernels() is None and loads == []
    assert capsys.readouterr().err == (f"warning: impl fused_cpp: {build_dir / 'lock'} has stood for 60 minutes "
                                       f"with no build running (a build killed mid-way leaves it: delete it)" + INSTEAD)


def test_a_fresh_lock_no_build_claims_is_waited_for_until_it_is_old(fresh, capsys, monkeypatch):
    build_dir, loads = fresh
    monkeypatch.setattr(compiled, "BUILD_WAIT_S", 1.5)
    leave(build_dir)
    tic = time.monotonic()
    assert compiled.lstm_kernels() is None and loads == [] and time.monotonic() - tic >= 1
    lock = build_dir / "lock"
    assert capsys.readouterr().err == (
        f"impl fused_cpp: waiting for a build outside charrnn that holds {lock}, until the lock is 0.025 minutes "
        f"old (delete it if no build is running)\n"
        f"warning: impl fused_cpp: {lock} has stood for 0 minutes with no build running (a build killed mid-way "
        f"leaves it: delete it)" + INSTEAD)


def test_without_a_compiler_one_line_and_no_build_started(fresh, capsys, monkeypatch):
    build_dir, loads = fresh
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    got = run("fused_cpp")
    assert capsys.readouterr().err == ("warning: impl fused_cpp: no C++ compiler to build the compiled LSTM kernels "
                                       "(/nonexistent/c++ is not on PATH; set CXX)" + INSTEAD)
    assert loads == [] and all(torch.equal(a, b) for a, b in zip(got, run("fused")))


FAILED_BUILD = """
import logging, sys, warnings
import torch.utils.cpp_extension as ext
from charrnn_torch.model import compiled

LOG = ("Error building extension 'charrnn_lstm': [1/2] c++ -MMD -MF lstm_kernel.o.d " + "-I/usr/include " * 60
       + "\\nlstm_kernel.cpp:12:3: error: 'vfoo' was not declared in this scope\\n   12 |   vfoo(x);\\n"
       + "ninja: build stopped: subcommand failed.\\n")

def banner_then_fail(**kwargs):  # what torch's loader says of a compiler it does not know, then its error
    ext.logger.warning(ext.WRONG_COMPILER_WARNING, "cc", "g++", sys.platform, "g++", "cc", "cc")
    warnings.warn("a warning of torch's own")
    raise RuntimeError(LOG)

ext.load = banner_then_fail
assert compiled.lstm_kernels() is None
"""


def test_a_failed_build_is_one_line_naming_the_compilers_error(tmp_path):
    # In a process of its own: what a user's terminal shows, with torch's own logging set up as it is.
    r = subprocess.run([sys.executable, "-c", FAILED_BUILD], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), PYTHONPATH=str(ROOT)))
    build_dir = tmp_path / compiled.build_name()[0]
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert r.stderr == (
        f"impl fused_cpp: building the compiled LSTM kernels into {build_dir} (once, about a minute)\n"
        "warning: impl fused_cpp: could not build the compiled LSTM kernels (lstm_kernel.cpp:12:3: error: 'vfoo' "
        "was not declared in this scope)" + INSTEAD)
