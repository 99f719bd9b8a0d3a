"""The opt-in compiled kernels (``model.impl: fused_cpp``), built on first use.

``fused`` runs each step from Python: a GEMM, then the step maths as aten calls (for the LSTM 7
forward and 11 backward, each a separately dispatched pass over (B, H) slices).
``lstm_kernel.cpp`` runs each cell's whole loop over 16 steps or more in one parallel region
(forward_loop, backward_loop, and the tanh cell's and the GRU's): each thread multiplies for a
share of the hidden units (with oneDNN where packed_gemm.py picks it, else at::mm), then steps a
block of rows, adding the products in as it reads the gates. Shorter calls (sampling's one step)
run its LSTM step kernels from Python. It is
built with torch's C++ extension loader (a C++ compiler and ninja), once for each source, torch
version and CPU kind, into torch's extension cache. Where it cannot be built (no compiler, no
ninja, a failed build, another build's lock that never goes away), ``fused_cpp`` runs ``fused``'s
aten kernels, the same maths, after one warning line; off the CPU (or in another dtype than
float32 and float64) it runs them silently, as there is nothing to build for. The default install
never needs a toolchain.
"""
import contextlib
import functools
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from .. import files
from ..errors import one_line, torch_quiet

# The LSTM's step kernels, and sampling's per-character loop (which calls them): one module.
SOURCES = [Path(__file__).with_name(n) for n in ("lstm_kernel.cpp", "sample_loop.cpp")]
# The vector instructions to build for, from what torch itself dispatches to on this CPU.
_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
              "AVX2": ["-mavx2", "-mfma"]}
_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math"]  # what lets the loops vectorize


def openmp_flags():
    """(compile, link) flags that let at::parallel_for split rows between torch's threads: it is
    OpenMP in torch's headers. Linking the libgomp that torch ships beside itself (by its file name,
    on the -L path torch's loader gives) keeps one OpenMP runtime in the process, torch's. Where torch
    ships none (macOS, Windows), no flags: the kernels then run on one thread."""
    if not (Path(torch.__file__).parent / "lib" / "libgomp.so.1").exists():
        return [], []
    return ["-fopenmp"], ["-l:libgomp.so.1"]


def build_name():
    """The build's name: a cache shared by checkouts, torch versions or CPUs never loads a build
    made for another source, torch or instruction set."""
    capability = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:10]
    version = re.sub(r"\W", "_", torch.__version__)
    return f"charrnn_lstm_{capability.lower()}_{version}_{digest}", _ISA_FLAGS.get(capability, [])


BUILD_WAIT_S = 600  # a build takes about a minute: a wait this long means no build is coming
OWNER = "charrnn-owner"  # beside torch's lock: the host and pid of the charrnn process building


@functools.lru_cache(maxsize=None)
def module():
    """The built module (the LSTM's forward_step and backward_step, its forward_loop and backward_loop;
    SampleLoop, sampling's per-character loop in C++), or None after one line on stderr saying why
    and what runs instead."""
    name, isa = build_name()
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    build_dir = root / name
    try:
        from torch.utils.cpp_extension import load

        missing_toolchain()
        build_dir.mkdir(parents=True, exist_ok=True)
        with build_claim(build_dir):
            if not any(build_dir.glob(f"{name}*.so")):
                print(f"impl fused_cpp: building the compiled kernels (the cells' loops, the sampling loop) into "
                      f"{build_dir} (once, about a minute)", file=sys.stderr)
            with torch_quiet("torch.utils.cpp_extension"):  # its banners; our one line says what matters
                omp_compile, omp_link = openmp_flags()
                return load(name=name, sources=[str(p) for p in SOURCES], extra_cflags=_FLAGS + omp_compile + isa,
                            extra_ldflags=omp_link, build_directory=str(build_dir))
    except Exception as e:  # no compiler, no ninja, a failed build: fused's aten kernels do the same maths
        print(f"warning: impl fused_cpp: {reason(e)}; running fused's kernels instead (the same maths, "
              f"not compiled)", file=sys.stderr)
        return None


class NoBuild(Exception):
    """Why the kernels are not built this time, in words for the one warning line."""


def missing_toolchain():
    """Refuse, before any build starts (and before a line says one does), where torch's loader
    could not build: no C++ compiler or no ninja."""
    from torch.utils.cpp_extension import is_ninja_available

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NoBuild(f"no C++ compiler to build the compiled kernels ({compiler} is not on PATH; set CXX)")
    if not is_ninja_available():
        raise NoBuild("no ninja to build the compiled kernels (pip install ninja)")


@contextlib.contextmanager
def build_claim(build_dir):
    """Hold the build directory while torch's loader builds or loads there. torch waits on its lock
    file for as long as it exists, and a build killed mid-way leaves it: so this process writes its
    host and pid beside it (OWNER), takes over from a writer that is gone (removing both), waits
    for a live one at most BUILD_WAIT_S, and gives up on a lock no charrnn process claims once it
    is older than that."""
    owner, lock, deadline, said = build_dir / OWNER, build_dir / "lock", time.monotonic() + BUILD_WAIT_S, False
    while not files.claim(owner):
        host, _, pid = read_owner(owner).rpartition("-")
        if files.writer_gone(host, pid):
            for path in (lock, owner):  # what the killed build left
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        if time.monotonic() > deadline:
            raise NoBuild(f"another build of the compiled kernels (process {pid} on {host}) has held {build_dir} "
                          f"for over {BUILD_WAIT_S} s")
        if not said:
            print(f"impl fused_cpp: waiting for another build of the compiled kernels (process {pid} on {host})",
                  file=sys.stderr)
            said = True
        time.sleep(0.5)
    try:
        wait_for_unclaimed_lock(lock)
        yield
    finally:
        owner.unlink()


def read_owner(owner):
    """The owner's <host>-<pid>, or "" while it is being written (then it is someone alive)."""
    try:
        return owner.read_text().strip()
    except FileNotFoundError:
        return ""


def wait_for_unclaimed_lock(lock):
    """torch's lock with no owner beside it: a build by something else than charrnn (or by an older
    charrnn). Wait while it may be a live build, until it is BUILD_WAIT_S old."""
    said = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > BUILD_WAIT_S:
            raise NoBuild(f"{lock} has stood for {age / 60:.0f} minutes with no build running (a build killed "
                          f"mid-way leaves it: delete it)")
        if not said:
            print(f"impl fused_cpp: waiting for a build outside charrnn that holds {lock}, until the lock is "
                  f"{BUILD_WAIT_S / 60:g} minutes old (delete it if no build is running)", file=sys.stderr)
            said = True
        time.sleep(0.5)


def reason(e):
    """Why a build did not happen, in one line: a NoBuild's words, else the compiler's first error
    line (torch's message holds the whole build log), else the message's first line."""
    if isinstance(e, NoBuild):
        return str(e)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    first = next((ln for ln in lines if re.search(r"\berror:", ln)), lines[0])  # gcc's and clang's "error:"
    return f"could not build the compiled kernels ({one_line(first)[:300]})"


def applies(device, dtype):
    """Whether the kernels run for tensors of this device and dtype: CPU, float32 or float64."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def kernels_for(pre):
    """The compiled kernels where they apply to pre, else None."""
    return module() if applies(pre.device, pre.dtype) else None
