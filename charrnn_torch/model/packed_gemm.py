"""c += a @ W for many small row blocks a against one fixed W: MKL's packed GEMM where torch has it.

Why: an sgemm call first copies ("packs") its B operand into the blocked layout its kernel
reads. In the recurrence that operand is W_hh, the same (H, H) matrix at every one of the T
steps, and each step's A has only B = 64 rows to spread that packing over. MKL's answer for
exactly this case (RNNs) is to pack once, ``cblas_sgemm_pack``, and multiply many times,
``cblas_sgemm_compute``. It pays only for a large enough W and row block (PACK_MIN_* below;
the timings behind both are in data/results/performance-cpu.md).

No torch op exposes it with beta = 1 (``torch.ops.mkl._mkl_linear`` allocates its result,
and the add it then needs costs what the packing saves), so this calls the two C functions
through ctypes, in the MKL that PyTorch's Linux x86-64 wheels link into libtorch_cpu.so and
export. Elsewhere (macOS, Windows, ARM, a build without MKL or with its symbols hidden), and
for anything but float32 on CPU, callers get ``addmm_`` instead.
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


# Where packing pays (performance-cpu.md): below these sizes MKL's packed path has more fixed cost
# than the packing it saves.
PACK_MIN_ROWS, PACK_MIN_DIM, PACK_MIN_CALLS = 16, 384, 16


def accumulate_matmul(W, rows, transpose, calls):
    """A function ``acc(c, a)`` doing ``c += a @ (W.T if transpose else W)`` in place.

    a: (rows, K) and c: (rows, N), both contiguous, like each step's rows of a time-major
    buffer. ``calls`` is how many times it will run: the one-off cost of packing (or of a
    contiguous copy of W.T) only pays over many.
    """
    pack_pays = calls >= PACK_MIN_CALLS and rows >= PACK_MIN_ROWS and min(W.shape) >= PACK_MIN_DIM
    mkl = mkl_packed_gemm() if pack_pays and W.is_cpu and W.dtype == torch.float32 else None
    if mkl is None:
        # A contiguous W.T makes MKL's GEMM ~7% faster than a transposed view: worth one copy
        # for many calls, not for sampling's one-step ones.
        Wm = (W.t().contiguous() if calls >= 16 else W.t()) if transpose else W
        return lambda c, a: c.addmm_(a, Wm)
    get_size, pack, compute = mkl
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
    return acc
