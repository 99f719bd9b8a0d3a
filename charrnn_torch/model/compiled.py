"""The opt-in compiled LSTM step kernels (``model.impl: fused_cpp``), built on first use.

``fused`` runs the LSTM's element-wise step maths as 7 aten calls per step forward and 11
backward, each a separately dispatched pass over (B, H) slices; ``lstm_kernel.cpp`` does each
direction's in one pass. It is built with torch's C++ extension loader (a C++ compiler and
ninja), once for each source, torch version and CPU kind, into torch's extension cache. Where it
cannot be built, ``fused_cpp`` runs ``fused``'s aten kernels, the same maths, after one warning;
off the CPU (or in another dtype than float32 and float64) it runs them silently, as there is
nothing to build for. The default install never needs a toolchain.
"""
import functools
import hashlib
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from ..errors import one_line

SOURCE = Path(__file__).with_name("lstm_kernel.cpp")
# The vector instructions to build for, from what torch itself dispatches to on this CPU.
_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
              "AVX2": ["-mavx2", "-mfma"]}
_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math"]  # what lets the loops vectorize


def build_name():
    """The build's name: a cache shared by checkouts, torch versions or CPUs never loads a build
    made for another source, torch or instruction set."""
    capability = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:10]
    version = re.sub(r"\W", "_", torch.__version__)
    return f"charrnn_lstm_{capability.lower()}_{version}_{digest}", _ISA_FLAGS.get(capability, [])


@functools.lru_cache(maxsize=None)
def lstm_kernels():
    """The built module (forward_step, backward_step), or None after one warning."""
    name, isa = build_name()
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    build_dir = root / name
    try:
        from torch.utils.cpp_extension import load
        build_dir.mkdir(parents=True, exist_ok=True)
        if not any(build_dir.glob(f"{name}*.so")):
            print(f"impl fused_cpp: building the compiled LSTM kernels into {build_dir} (once, about a minute)",
                  file=sys.stderr)
        if (build_dir / "lock").exists():
            # torch's loader waits on this file without a word; a build killed mid-way leaves it behind
            print(f"impl fused_cpp: waiting for another build of the LSTM kernels; if none is running, "
                  f"delete {build_dir / 'lock'}", file=sys.stderr)
        return load(name=name, sources=[str(SOURCE)], extra_cflags=_FLAGS + isa, build_directory=str(build_dir))
    except Exception as e:  # no compiler, no ninja, a failed build: fused's aten kernels do the same maths
        warnings.warn(f"impl fused_cpp: could not build the compiled LSTM kernels, so it runs fused's "
                      f"({one_line(e)[:300]})", stacklevel=2)
        return None


def applies(device, dtype):
    """Whether the kernels run for tensors of this device and dtype: CPU, float32 or float64."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def kernels_for(pre):
    """The compiled kernels where they apply to pre, else None."""
    return lstm_kernels() if applies(pre.device, pre.dtype) else None
