"""c += a @ W for many small row blocks a against one fixed W: the recurrence's step GEMM, with
the fastest kernel torch carries for it.

Why: a GEMM call first copies ("packs") its B operand into the blocked layout its kernel
reads. In the recurrence that operand is W_hh, the same matrix at every one of the T steps,
and each step's A has only B = 64 rows to spread that packing over. Two libraries inside
PyTorch's x86-64 wheels pack once and multiply many times:

- **oneDNN** (``torch.ops.mkldnn._reorder_linear_weight`` once, ``_linear_pointwise`` per
  step), the library behind ``nn.LSTM`` on CPU. Its JIT kernels use the CPU's widest vectors
  whoever made the CPU: on the AMD EPYC of data/results/performance-cpu.md it multiplies a
  (64, 512) block by a (512, 2048) W_hh 1.3-1.4x as fast as MKL. It pays from a 512 x 512 W
  (DNN_MIN_WEIGHT); below that its fixed cost per call is more than it saves.
- **MKL**'s ``cblas_sgemm_pack`` / ``cblas_sgemm_compute``, called through ctypes (no torch op
  exposes it with beta = 1), for a W too small for oneDNN but large enough to pack (PACK_MIN_*).

Elsewhere (a build without them, anything but float32 on CPU, too few rows or calls),
callers get ``addmm_``. Each choice depends only on shapes, dtype and what torch carries,
never on timing, so a run and its resume multiply with the same kernel.
"""
import ctypes
import functools
import os
import platform

import torch

# Enum values from MKL's mkl_cblas.h.
_ROW_MAJOR, _NO_TRANS, _TRANS, _PACKED, _B_MATRIX = 101, 111, 112, 151, 162


@functools.lru_cache(maxsize=None)
def mkl_packed_gemm():
    """(pack_get_size, pack, compute) from the MKL inside torch, or None where it is not there."""
    if platform.system() != "Linux" or not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_size, pack, compute = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack, lib.cblas_sgemm_compute
    except (OSError, AttributeError):
        return None
    # MKL's LP64 interface, whose MKL_INT is a C int (the ILP64 one carries a _64 suffix).
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    get_size.restype, get_size.argtypes = ctypes.c_size_t, [i, i, i, i]
    pack.restype, pack.argtypes = None, [i, i, i, i, i, i, f, p, i, p]
    compute.restype, compute.argtypes = None, [i, i, i, i, i, i, p, i, p, i, f, p, i]
    # Try the ABI assumed above (integer width, enum values) on a tiny exact product before
    # trusting it with real buffers.
    f32 = torch.float32
    a, w = torch.arange(6, dtype=f32).view(2, 3), torch.arange(12, dtype=f32).view(3, 4)
    c = torch.ones(2, 4, dtype=f32)
    buf = torch.empty(get_size(_B_MATRIX, 2, 4, 3), dtype=torch.uint8)
    pack(_ROW_MAJOR, _B_MATRIX, _NO_TRANS, 2, 4, 3, 1.0, w.data_ptr(), 4, buf.data_ptr())
    compute(_ROW_MAJOR, _NO_TRANS, _PACKED, 2, 4, 3, a.data_ptr(), 3, buf.data_ptr(), 4, 1.0, c.data_ptr(), 4)
    if not torch.equal(c, 1 + a @ w):
        return None
    return get_size, pack, compute


@functools.lru_cache(maxsize=None)
def onednn_linear():
    """(reorder, linear) from the oneDNN inside torch, or None where it is not there."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        reorder, linear = torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
        # An exact product (small integers) proves the ops are there and multiply as assumed.
        a, w = torch.arange(6, dtype=torch.float32).view(2, 3), torch.arange(12, dtype=torch.float32).view(4, 3)
        got = linear(a, reorder(w, 2), None, "none", [], None)
    except (AttributeError, RuntimeError):
        return None
    return (reorder, linear) if torch.equal(got, a @ w.t()) else None


# Where packing pays (performance-cpu.md): below these sizes a packed path has more fixed cost
# than the packing it saves. oneDNN's needs a larger W than MKL's.
PACK_MIN_ROWS, PACK_MIN_DIM, PACK_MIN_CALLS = 16, 384, 16
DNN_MIN_WEIGHT = 512 * 512


def step_kernel(shape, rows, calls, device, dtype):
    """Which kernel accumulate_matmul takes for a W of this shape, device and dtype: "onednn",
    "mkl packed" or "addmm". The one rule, also what the bench reports."""
    many = calls >= PACK_MIN_CALLS and rows >= PACK_MIN_ROWS and torch.device(device).type == "cpu" \
        and dtype == torch.float32
    if many and shape[0] * shape[1] >= DNN_MIN_WEIGHT and onednn_linear() is not None:
        return "onednn"
    if many and min(shape) >= PACK_MIN_DIM and mkl_packed_gemm() is not None:
        return "mkl packed"
    return "addmm"


def accumulate_matmul(W, rows, transpose, calls):
    """A function ``acc(c, a)`` doing ``c += a @ (W.T if transpose else W)`` in place.

    a: (rows, K) and c: (rows, N), both contiguous, like each step's rows of a time-major
    buffer. ``calls`` is how many times it will run: the one-off cost of packing (or of a
    contiguous copy of W.T) only pays over many.

    ``acc.kernel`` names the kernel (step_kernel's answer).
    """
    kernel = step_kernel(W.shape, rows, calls, W.device, W.dtype)
    if kernel == "onednn":
        return _onednn_accumulate(onednn_linear(), W, rows, transpose)
    if kernel == "addmm":
        # A contiguous W.T makes MKL's GEMM ~7% faster than a transposed view: worth one copy
        # for many calls, not for sampling's one-step ones.
        Wm = (W.t().contiguous() if calls >= PACK_MIN_CALLS else W.t()) if transpose else W
        acc = lambda c, a: c.addmm_(a, Wm)  # noqa: E731
        acc.kernel = "addmm"
        return acc
    get_size, pack, compute = mkl_packed_gemm()
    W = W.contiguous()
    N, K = W.shape if transpose else W.shape[::-1]
    packed = torch.empty(get_size(_B_MATRIX, rows, N, K), dtype=torch.uint8)
    pack(_ROW_MAJOR, _B_MATRIX, _TRANS if transpose else _NO_TRANS, rows, N, K, 1.0,
         W.data_ptr(), W.shape[1], packed.data_ptr())
    packed_ptr = packed.data_ptr()
    a_shape, c_shape, f32 = torch.Size((rows, K)), torch.Size((rows, N)), torch.float32

    def acc(c, a):
        # The C call reads raw pointers, so what they point at is checked here, not trusted (~0.5 us).
        if not (a.shape == a_shape and c.shape == c_shape and a.dtype is f32 and c.dtype is f32
                and a.is_contiguous() and c.is_contiguous() and a.is_cpu and c.is_cpu):
            raise ValueError(f"packed GEMM wants contiguous float32 CPU tensors of {tuple(a_shape)} and "
                             f"{tuple(c_shape)}, got {a.dtype} {tuple(a.shape)} and {c.dtype} {tuple(c.shape)}")
        compute(_ROW_MAJOR, _NO_TRANS, _PACKED, rows, N, K, a.data_ptr(), K, packed_ptr, N, 1.0, c.data_ptr(), N)
        return c

    acc.packed = packed  # keeps the buffer alive as long as acc
    acc.kernel = "mkl packed"
    return acc


def _onednn_accumulate(dnn, W, rows, transpose):
    """acc(c, a) through oneDNN: linear(a, Wl) is a @ Wl.T, so Wl is W for transpose, else W.T.
    Its product comes fresh from the op and is added into c: oneDNN has no beta = 1 here."""
    reorder, linear = dnn
    packed = reorder((W if transpose else W.t()).contiguous(), rows)

    def acc(c, a):
        return c.add_(linear(a, packed, None, "none", [], None))

    acc.kernel = "onednn"
    return acc
