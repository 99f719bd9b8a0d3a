"""Proves the packed GEMMs behind `fused`'s float32 CPU recurrence (charrnn_torch/model/packed_gemm.py).

Both packed kernels, oneDNN's (reorder once, linear per step) and MKL's cblas_sgemm_pack/compute
(called through ctypes), must do what addmm_ does (c += a @ W or a @ W.T, for rectangular,
distinct sizes so a transposed operand fails); MKL's must refuse tensors its raw pointers cannot
safely read; each must be found wherever torch carries it on Linux x86-64, be chosen by shape
alone (oneDNN from a 512 x 512 W, MKL below), and actually be taken by `fused` in float32, with
the same losses and gradients as the addmm_ fallback and the float64 numpy reference, to float32
precision. The float64 gradient tests (test_gradients.py) cover the same loop on the addmm_ path.
Run: pytest tests/test_packed_gemm.py
"""
import platform

import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.model import packed_gemm, reference
from charrnn_torch.model.cells import cross_entropy
from conftest import rel_err

ROWS, K, N = 3, 7, 11

needs_mkl = pytest.mark.skipif(packed_gemm.mkl_packed_gemm() is None,
                               reason="torch's MKL packed GEMM is not reachable here")
needs_dnn = pytest.mark.skipif(packed_gemm.onednn_linear() is None, reason="torch's oneDNN linear is not reachable here")


@pytest.fixture
def pack_small(monkeypatch):
    """Pack even the tests' small, distinct sizes with MKL, which are below where packing pays."""
    monkeypatch.setattr(packed_gemm, "PACK_MIN_ROWS", 1)
    monkeypatch.setattr(packed_gemm, "PACK_MIN_DIM", 1)


@pytest.fixture
def dnn_small(pack_small, monkeypatch):
    """Hand even the tests' small sizes to oneDNN."""
    monkeypatch.setattr(packed_gemm, "DNN_MIN_WEIGHT", 1)


def test_found_where_torch_links_mkl():
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not torch.backends.mkl.is_available():
        pytest.skip("only PyTorch's Linux x86-64 builds with MKL are known to export it")
    assert packed_gemm.mkl_packed_gemm() is not None


def test_onednn_found_where_torch_carries_it():
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not torch.backends.mkldnn.is_available():
        pytest.skip("only PyTorch's Linux x86-64 builds with oneDNN are checked")
    assert packed_gemm.onednn_linear() is not None


@needs_dnn
@needs_mkl
def test_the_kernel_is_chosen_by_shape_alone():
    rows, calls = 16, 16
    cases = [(torch.randn(512, 512), rows, calls, "onednn"), (torch.randn(2048, 128), rows, calls, "onednn"),
             (torch.randn(384, 512), rows, calls, "mkl packed"),  # a W below oneDNN's size, above MKL's
             (torch.randn(512, 512), rows - 1, calls, "addmm"), (torch.randn(512, 512), rows, calls - 1, "addmm"),
             (torch.randn(512, 512).double(), rows, calls, "addmm")]
    for W, rows_, calls_, kernel in cases:
        assert packed_gemm.step_kernel(W.shape, rows_, calls_, W.device, W.dtype) == kernel  # what the bench says
        for transpose in (False, True):
            assert packed_gemm.accumulate_matmul(W, rows_, transpose, calls_).kernel == kernel, (W.shape, rows_, calls_)


KERNELS = [pytest.param("mkl packed", marks=needs_mkl), pytest.param("onednn", marks=needs_dnn)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("transpose", [False, True])
def test_accumulates_like_addmm(kernel, transpose, dnn_small, monkeypatch):
    if kernel != "onednn":
        monkeypatch.setattr(packed_gemm, "onednn_linear", lambda: None)
    g = torch.Generator().manual_seed(0)
    W = torch.randn((N, K) if transpose else (K, N), generator=g)
    a, c0 = torch.randn(ROWS, K, generator=g), torch.randn(ROWS, N, generator=g)
    acc = packed_gemm.accumulate_matmul(W, ROWS, transpose, calls=16)
    assert acc.kernel == kernel  # not the addmm_ fallback
    Wm = (W.t() if transpose else W).double()
    c = c0.clone()
    assert acc(c, a) is c
    torch.testing.assert_close(c.double(), c0.double() + a.double() @ Wm, rtol=1e-6, atol=1e-6)
    acc(c, a)  # accumulates: beta = 1
    torch.testing.assert_close(c.double(), c0.double() + 2 * a.double() @ Wm, rtol=1e-6, atol=1e-6)


@needs_mkl
def test_refuses_what_its_pointers_cannot_read(pack_small):
    W = torch.randn(K, N)
    acc = packed_gemm.accumulate_matmul(W, ROWS, transpose=False, calls=16)
    a, c = torch.randn(ROWS, K), torch.randn(ROWS, N)
    for bad_a, bad_c in [(torch.randn(K, ROWS).t(), c),  # right shape, not contiguous
                         (a.double(), c.double()),
                         (torch.randn(ROWS + 1, K), c),
                         (a, torch.randn(ROWS, N + 1))]:
        with pytest.raises(ValueError, match="packed GEMM wants"):
            acc(bad_c, bad_a)


@needs_mkl
def test_packs_only_where_it_pays():
    W, rows, calls = torch.randn(384, 512), 16, 16
    assert packed_gemm.accumulate_matmul(W, rows, False, calls).kernel == "mkl packed"
    for W_, rows_, calls_ in [(W, rows, 15), (W, 15, calls), (W[:, :383], rows, calls), (W.double(), rows, calls)]:
        assert packed_gemm.accumulate_matmul(W_, rows_, False, calls_).kernel == "addmm"


SMALL = dict(V=11, H=7, B=3, T=20)  # T >= 16, so fused packs (with pack_small)


def counting(kernel, monkeypatch):
    """Leave only ``kernel`` ("onednn", "mkl packed" or "addmm") to accumulate_matmul, with its
    per-step calls counted: the list it returns grows by one per call."""
    calls = []
    mkl = dnn = None
    if kernel == "mkl packed":
        get_size, pack, compute = packed_gemm.mkl_packed_gemm()
        mkl = (get_size, pack, lambda *args: (calls.append(1), compute(*args)))
    if kernel == "onednn":
        reorder, linear = packed_gemm.onednn_linear()
        dnn = (reorder, lambda *args: (calls.append(1), linear(*args))[1])
    monkeypatch.setattr(packed_gemm, "mkl_packed_gemm", lambda: mkl)
    monkeypatch.setattr(packed_gemm, "onednn_linear", lambda: dnn)
    return calls


def fused_float32_run(L, kernel, monkeypatch, V, H, B, T):
    """Loss, gradients and dL/dh0 of one float32 fused step with only ``kernel`` in its step GEMMs,
    and how many calls that kernel took."""
    calls = counting(kernel, monkeypatch)
    torch.manual_seed(0)
    model = CharRNN(V, H, num_layers=L, impl="fused")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    h0 = torch.randn(L, B, H, generator=g, requires_grad=True)
    logits, _ = model(x, h0)
    loss = cross_entropy(logits, y, reduction="sum")
    loss.backward()
    grads = {k: p.grad.double().numpy() for k, p in model.named_parameters()}
    params = {k: p.detach().double().numpy() for k, p in model.named_parameters()}
    return loss.item(), grads, h0.grad.double().numpy(), len(calls), (params, x.numpy(), y.numpy(), h0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("L", [1, 2])
def test_fused_float32_takes_it_and_matches(L, kernel, monkeypatch, dnn_small):
    loss, grads, dh0, n_calls, (params, x, y, h0) = fused_float32_run(L, kernel, monkeypatch, **SMALL)
    T = SMALL["T"]
    assert n_calls == L * (T + T - 1)  # every step forward, every step but the first backward
    loss_mm, grads_mm, dh0_mm, n_mm, _ = fused_float32_run(L, "addmm", monkeypatch, **SMALL)
    assert n_mm == 0
    r_loss, r_grads, r_dh0, _, _ = reference.loss_and_grads(params, x, y, h0.detach().double().numpy())
    # float32 sums of a few hundred terms: ~1e-6 relative, so 1e-5 (float64 gets 1e-9, elsewhere)
    for want_loss, want_grads, want_dh0 in [(loss_mm, grads_mm, dh0_mm), (r_loss, r_grads, r_dh0)]:
        assert loss == pytest.approx(want_loss, rel=1e-5)
        for name in want_grads:
            assert rel_err(grads[name], want_grads[name]) <= 1e-5, name
        assert rel_err(dh0, want_dh0) <= 1e-5


@pytest.mark.parametrize("kernel, H", [pytest.param("mkl packed", 384, marks=needs_mkl),
                                       pytest.param("onednn", 512, marks=needs_dnn)])
def test_fused_at_a_size_where_packing_pays_matches_addmm(kernel, H, monkeypatch):
    # No lowered thresholds: each library's own choice of kernel and thread split at a real size.
    sizes = dict(V=65, H=H, B=32, T=16)
    loss, grads, dh0, n_calls, _ = fused_float32_run(1, kernel, monkeypatch, **sizes)
    loss_mm, grads_mm, dh0_mm, _, _ = fused_float32_run(1, "addmm", monkeypatch, **sizes)
    assert n_calls == 2 * 16 - 1
    assert loss == pytest.approx(loss_mm, rel=1e-5)
    for name in grads_mm:
        assert rel_err(grads[name], grads_mm[name]) <= 1e-5, name
    assert rel_err(dh0, dh0_mm) <= 1e-5
