"""Proves impl fused_cpp, the LSTM's element-wise step maths in compiled kernels (compiled.py,
lstm_kernel.cpp): they build where a C++ toolchain is (required where CHARRNN_REQUIRE_CPP=1, as in
CI); in float32 they match fused's aten kernels to 1e-5, at a width that is no multiple of any
vector length, and their own exp and tanh match torch's over the whole range of inputs (tanh to a
few float32 roundings, relatively, near 0); they refuse buffers of the wrong shape or dtype; and
where they cannot be built, fused_cpp warns once and runs fused's kernels, bit for bit the same as
fused. Their float64 gradients are proved against the numpy reference to 1e-9 with every other
impl's, in test_gated_cells.py.
"""
import os
import shutil

import pytest
import torch
import torch.utils.cpp_extension

from charrnn_torch import CharRNN
from charrnn_torch.model import compiled
from charrnn_torch.model.cells import cross_entropy

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


def test_without_a_toolchain_it_runs_fused(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    compiled.lstm_kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build the compiled LSTM kernels.*Ninja is required"):
            got = run("fused_cpp")
        want = run("fused")
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    finally:
        compiled.lstm_kernels.cache_clear()  # the next user builds (or loads) the real kernels
