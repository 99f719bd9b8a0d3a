"""Proves impl fused_cpp, the LSTM's element-wise step maths and the LSTM's and the GRU's loops over
time in compiled kernels (compiled.py, lstm_kernel.cpp): they build where a C++ toolchain is (required where CHARRNN_REQUIRE_CPP=1, as in
CI); in float32 they match fused's aten kernels to 1e-5, at a width that is no multiple of any
vector length, and their own exp and tanh match torch's over the whole range of inputs (tanh to a
few float32 roundings, relatively, near 0); they refuse buffers of the wrong shape or dtype; and
where they cannot be built, fused_cpp warns once and runs fused's kernels, bit for bit the same as
fused. A product added as the kernels read their buffers (oneDNN's, which comes apart) gives the
bits of adding it first, and fused_cpp with oneDNN's step GEMMs matches the unpacked path to
float32 precision; splitting the rows between threads changes no bit, and they run on torch's own
OpenMP runtime, the only one in the process. The compiled loops over all T steps (each thread
multiplying for a share of the units, then stepping a block of rows) give the LSTM the bits of the
step kernels called a step at a time, on 1, 2 and 3 threads; the GRU's match fused to float32
precision, with oneDNN's products and with at::mm's.
The warning is one line, why and what runs instead, with no line of torch's and no
"building" line for a build that never starts; a lock left by a killed build is cleared, a live
build is waited for at most BUILD_WAIT_S, and a lock no charrnn build claims is given up once it
is older than that: never a hang. Their float64 gradients are proved against the numpy reference
to 1e-9 with every other impl's, in test_gated_cells.py.
"""
import logging
import os
import re
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
from charrnn_torch.model import compiled, packed_gemm
from charrnn_torch.model.cells import cross_entropy
from conftest import ROOT, rel_err

V, H, B, T, L = 11, 37, 5, 9, 2  # H = 37: every vector loop has a tail


def toolchain():
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


@pytest.fixture
def kernels():
    if compiled.module() is None:
        if os.environ.get("CHARRNN_REQUIRE_CPP") == "1":
            pytest.fail("CHARRNN_REQUIRE_CPP=1 but the compiled kernels did not build")
        pytest.skip("no C++ toolchain to build the compiled kernels")
    return compiled.module()


def test_kernels_build_where_a_toolchain_is():
    if not toolchain() and os.environ.get("CHARRNN_REQUIRE_CPP") != "1":
        pytest.skip("no C++ compiler or ninja")
    assert compiled.module() is not None


def run(impl, cell="lstm", T=T):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl, cell=cell).build_kernels()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    logits, state = model(x)
    last = state[-1] if cell == "lstm" else state  # c for the LSTM, h for the GRU
    (cross_entropy(logits, y, "sum") + (last * last).sum()).backward()
    return [logits.detach(), *(s.detach() for s in (state if cell == "lstm" else (state,)))] + \
        [p.grad for p in model.parameters()]


@pytest.mark.parametrize("cell, steps", [("lstm", T), ("lstm", 20), ("gru", 20)])
def test_float32_matches_fused(kernels, cell, steps):
    """At T = 9 the step kernels from Python; at T = 20 the compiled loops."""
    for a, b in zip(run("fused", cell, steps), run("fused_cpp", cell, steps)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


def step_buffers(rows, width, seed):
    """Random (gates, c_prev, dh, p4, p1) and empty (c, tc, h, da) buffers for rows of one step."""
    g = torch.Generator().manual_seed(seed)
    r = lambda w: torch.randn(rows, w, generator=g)  # noqa: E731
    return (r(4 * width), r(width), r(width), r(4 * width), r(width)), [torch.empty(rows, width) for _ in range(3)]


def test_a_product_added_in_the_kernels_is_adding_it_first(kernels):
    (a, c_prev, dh, p4, p1), (c, tc, h) = step_buffers(B, H, 2)
    a_sum, outs = a + p4, [torch.empty_like(c) for _ in range(3)]
    kernels.forward_step(a, c_prev, c, tc, h, p4)
    kernels.forward_step(a_sum, c_prev, *outs)
    for got, want in zip((a, c, tc, h), (a_sum, *outs)):
        assert torch.equal(got, want)
    dc, dc_sum, da, da_sum, dh_sum = c_prev.clone(), c_prev.clone(), torch.empty_like(a), torch.empty_like(a), dh + p1
    kernels.backward_step(a, c_prev, tc, dh, dc, da, p1)
    kernels.backward_step(a, c_prev, tc, dh_sum, dc_sum, da_sum)
    for got, want in ((dh, dh_sum), (dc, dc_sum), (da, da_sum)):
        assert torch.equal(got, want)


def test_splitting_rows_between_threads_changes_no_bit(kernels):
    rows = 1200  # more than two of the kernels' grains (32768 elements, 222 rows at H = 37)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            (a, c_prev, dh, p4, p1), (c, tc, h) = step_buffers(rows, H, 3)
            da, dc = torch.empty_like(a), c_prev.clone()
            kernels.forward_step(a, c_prev, c, tc, h, p4)
            kernels.backward_step(a, c_prev, tc, dh, dc, da, p1)
            results.append((a, c, tc, h, dh, dc, da))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_one_openmp_runtime_in_the_process(kernels):
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if re.search(r"/lib(g|i)?omp[^/]*\.so", line)}
    assert len(runtimes) <= 1, runtimes  # the kernels run on torch's own OpenMP threads


def cell_float32(monkeypatch, kernel, cell):
    """fused_cpp's float32 loss and gradients (L = 2, T = 20: the compiled loops) with only ``kernel``
    ("onednn", its products added in the kernels, or "addmm": at::mm's) in the step GEMMs, and how
    many products oneDNN made (counted by the profiler, which sees the compiled loops' calls)."""
    dnn = packed_gemm.onednn_linear()
    monkeypatch.setattr(packed_gemm, "onednn_linear", lambda: dnn if kernel == "onednn" else None)
    monkeypatch.setattr(packed_gemm, "mkl_packed_gemm", lambda: None)
    monkeypatch.setattr(packed_gemm, "DNN_MIN_WEIGHT", 1)  # oneDNN even at the tests' small sizes
    monkeypatch.setattr(packed_gemm, "PACK_MIN_ROWS", 1)
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl="fused_cpp", cell=cell).build_kernels()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (B, 20), generator=g), torch.randint(0, V, (B, 20), generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        logits, state = model(x)
        last = state[-1] if cell == "lstm" else state
        (cross_entropy(logits, y, "sum") + (last * last).sum()).backward()
    products = sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")
    return [p.grad.double() for p in model.parameters()], products


@pytest.mark.skipif(packed_gemm.onednn_linear() is None, reason="torch's oneDNN linear is not reachable here")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_compiled_loops_are_the_steps_one_by_one(kernels, threads):
    """forward_loop and backward_loop (all T steps in one parallel region, each thread multiplying for
    a share of the units and stepping a share of the rows) give the bits of calling forward_step and
    backward_step from Python a step at a time, each with oneDNN's whole product: on 1, 2 and 3
    threads, so with one share, two (32 and 5 units) and three (16, 16 and 5)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _loops_and_steps_agree(kernels)
    finally:
        torch.set_num_threads(saved)


def _loops_and_steps_agree(kernels):
    reorder, linear = packed_gemm.onednn_linear()
    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    W, pre, h0, c0, dh_all, dc0 = r(4 * H, H), r(T * B, 4 * H), r(B, H), r(B, H), r(T * B, H), r(B, H)
    fwd, bwd = reorder(W.contiguous(), B), reorder(W.t().contiguous(), B)
    rows = lambda t: slice(t * B, (t + 1) * B)  # noqa: E731
    # Step by step, from Python:
    a, h, c, tc = pre.clone(), *(torch.empty(T * B, H) for _ in range(3))
    for t in range(T):
        prev_h, prev_c = (h[rows(t - 1)], c[rows(t - 1)]) if t else (h0, c0)
        kernels.forward_step(a[rows(t)], prev_c, c[rows(t)], tc[rows(t)], h[rows(t)],
                             linear(prev_h, fwd, None, "none", [], None))
    dh, dc, da, recurrent = dh_all.clone(), dc0.clone(), torch.empty(T * B, 4 * H), None
    for t in range(T - 1, -1, -1):
        kernels.backward_step(a[rows(t)], c[rows(t - 1)] if t else c0, tc[rows(t)], dh[rows(t)], dc, da[rows(t)],
                              recurrent)
        recurrent = linear(da[rows(t)], bwd, None, "none", [], None) if t else None
    # All T steps in one call each:
    a2, h2, c2, tc2 = pre.clone(), *(torch.empty(T * B, H) for _ in range(3))
    kernels.forward_loop(a2, h0, c0, h2, c2, tc2, W, True)
    dh2, dc2, da2 = dh_all.clone(), dc0.clone(), torch.empty(T * B, 4 * H)
    kernels.backward_loop(a2, c0, c2, tc2, dh2, dc2, da2, W, True)
    for one_by_one, looped in [(a, a2), (h, h2), (c, c2), (tc, tc2), (dh, dh2), (dc, dc2), (da, da2)]:
        assert torch.equal(one_by_one, looped)


@pytest.mark.skipif(packed_gemm.onednn_linear() is None, reason="torch's oneDNN linear is not reachable here")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_onednn_products_added_in_the_kernels_match_the_unpacked_path(kernels, monkeypatch, cell):
    got, n_products = cell_float32(monkeypatch, "onednn", cell)
    want, none = cell_float32(monkeypatch, "addmm", cell)
    # every step forward and all but the first backward, once for each thread's share of the units
    assert n_products >= L * (20 + 20 - 1) and n_products % (L * (20 + 20 - 1)) == 0 and none == 0
    for a, b in zip(got, want):
        assert rel_err(a.numpy(), b.numpy()) <= 1e-5  # float32 sums of a few hundred terms: ~1e-6


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
    with pytest.raises(RuntimeError, match="p: "):
        kernels.forward_step(a, s, s.clone(), s.clone(), s.clone(), s.clone())  # p is as wide as the gates
    with pytest.raises(RuntimeError, match="p: "):
        kernels.backward_step(a, s, s, s.clone(), s.clone(), a.clone(), a.clone())  # p is as wide as dh


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
    compiled.module.cache_clear()
    yield build_dir, loads
    compiled.module.cache_clear()  # the next user builds (or loads) the real kernels


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
    assert compiled.module() == "the kernels" and loads == [str(build_dir)]
    assert not (build_dir / "lock").exists() and not (build_dir / compiled.OWNER).exists()
    assert capsys.readouterr().err == (f"impl fused_cpp: building the compiled kernels (the cells' loops, the "
                                       f"sampling loop) into {build_dir} "
                                       f"(once, about a minute)\n")


def test_a_live_build_is_waited_for_at_most_build_wait_s(fresh, capsys, monkeypatch):
    build_dir, loads = fresh
    monkeypatch.setattr(compiled, "BUILD_WAIT_S", 1)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leave(build_dir, pid=alive.pid)
        assert compiled.module() is None and loads == []
    finally:
        alive.kill()
        alive.wait()
    host = socket.gethostname()
    assert capsys.readouterr().err == (
        f"impl fused_cpp: waiting for another build of the compiled kernels (process {alive.pid} on {host})\n"
        f"warning: impl fused_cpp: another build of the compiled kernels (process {alive.pid} on {host}) has held "
        f"{build_dir} for over 1 s" + INSTEAD)


def test_a_lock_no_build_claims_is_given_up_once_old(fresh, capsys):
    build_dir, loads = fresh
    leave(build_dir, age_s=3600)
    assert compiled.module() is None and loads == []
    assert capsys.readouterr().err == (f"warning: impl fused_cpp: {build_dir / 'lock'} has stood for 60 minutes "
                                       f"with no build running (a build killed mid-way leaves it: delete it)" + INSTEAD)


def test_a_fresh_lock_no_build_claims_is_waited_for_until_it_is_old(fresh, capsys, monkeypatch):
    build_dir, loads = fresh
    monkeypatch.setattr(compiled, "BUILD_WAIT_S", 1.5)
    leave(build_dir)
    tic = time.monotonic()
    assert compiled.module() is None and loads == [] and time.monotonic() - tic >= 1
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
    assert capsys.readouterr().err == ("warning: impl fused_cpp: no C++ compiler to build the compiled kernels "
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
assert compiled.module() is None
"""


def test_a_failed_build_is_one_line_naming_the_compilers_error(tmp_path):
    # In a process of its own: what a user's terminal shows, with torch's own logging set up as it is.
    r = subprocess.run([sys.executable, "-c", FAILED_BUILD], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), PYTHONPATH=str(ROOT)))
    build_dir = tmp_path / compiled.build_name()[0]
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert r.stderr == (
        f"impl fused_cpp: building the compiled kernels (the cells' loops, the sampling loop) into {build_dir} "
        "(once, about a minute)\n"
        "warning: impl fused_cpp: could not build the compiled kernels (lstm_kernel.cpp:12:3: error: 'vfoo' "
        "was not declared in this scope)" + INSTEAD)
