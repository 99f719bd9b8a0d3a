"""The opt-in compiled LSTM step kernels (``model.impl: fused_cpp``), built on first use.

``fused`` runs the LSTM's element-wise maths as 6 aten calls per step forward and 10 backward, each
a separately dispatched pass over (B, H) slices; ``lstm_kernel.cpp`` does each direction's in one
pass. It is built with torch's C++ extension loader (a C++ compiler and ninja), once per Python,
torch and CPU kind, into torch's extension cache. Where it cannot be built, or off the CPU,
``fused_cpp`` runs ``fused``'s aten kernels, the same maths, after one warning: the default
install never needs a toolchain.
"""
import functools
import warnings
from pathlib import Path

import torch

from .errors import one_line

SOURCE = Path(__file__).with_name("lstm_kernel.cpp")
COMPILED_CELLS = ("lstm",)  # the cells fused_cpp runs differently from fused (on CPU)
# The instruction set to build for, from what torch itself dispatches to on this CPU; it is part
# of the build's name, so a cache shared by different CPUs never runs one's build on the other.
_MARCH = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}


@functools.lru_cache(maxsize=None)
def lstm_kernels():
    """The built module (forward_step, backward_step), or None after one warning."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]  # what lets the exp loops vectorize; IEEE results unchanged
    if capability in _MARCH:
        flags.append(f"-march={_MARCH[capability]}")
    try:
        from torch.utils.cpp_extension import load
        return load(name=f"charrnn_lstm_{capability.lower()}", sources=[str(SOURCE)], extra_cflags=flags)
    except Exception as e:  # no compiler, no ninja, a failed build: fused's aten kernels do the same maths
        warnings.warn(f"impl fused_cpp: could not build the compiled LSTM kernels, so it runs fused's "
                      f"({one_line(e)[:300]})", stacklevel=2)
        return None


def kernels_for(pre):
    """The compiled kernels where they apply to pre (a CPU float32 or float64 tensor), else None."""
    if pre.device.type != "cpu" or pre.dtype not in (torch.float32, torch.float64):
        return None
    return lstm_kernels()
