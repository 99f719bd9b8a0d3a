"""The memory a run needs and how the process keeps it: the estimate that refuses a run too large
for the device, and glibc's malloc told to keep freed blocks for reuse."""
import ctypes
import ctypes.util
import platform

import torch

from ..errors import UserError
from ..model.cells import CELL_CLASSES

# glibc's mallopt() parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory():
    """Make glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Why: a CPU training step allocates and frees the same few large buffers (each (T, B, H)
    activation and its gradient) every step. By default glibc serves blocks that large with a
    fresh mmap and unmaps them on free, so every step pays page faults and the kernel's zeroing
    for memory it just gave back. Keeping the blocks is what PyTorch's CPU tuning guide gets by
    preloading jemalloc or tcmalloc, and what its CUDA caching allocator does on GPU. The cost is
    resident memory: the process keeps its high-water mark. What each costs is measured in
    data/results/performance-cpu.md.

    Returns True if the setting took effect (glibc), False elsewhere (musl, macOS, Windows).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # mallopt returns 1 on success. No mmap-served blocks means every block comes
        # from the heap and is reused; a high trim threshold keeps the heap's free top.
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def training_bytes(model_cfg, train_cfg, vocab_size, world_size=1):
    """About how much memory training needs per process: weights, gradients and two optimizer
    moments (Adam's; an upper bound for the others), and the (T·B, ·) buffers of each layer's
    G gates and of the logits with their gradients."""
    H, L, V, G = model_cfg.hidden_size, model_cfg.num_layers, vocab_size, CELL_CLASSES[model_cfg.cell].gates
    params = G * (V * H + (L - 1) * H * H + L * (H * H + H)) + V * H + V
    rows = train_cfg.seq_len * (train_cfg.batch_size // world_size)
    itemsize = torch.finfo(getattr(torch, train_cfg.dtype)).bits // 8
    return (4 * params + rows * (3 * G * H * L + 3 * V)) * itemsize


def available_bytes(device):
    """Free memory on the device, or None where it cannot be read (then nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_fits_in_memory(model_cfg, train_cfg, vocab_size, device, world_size=1):
    """Refuse, before allocating anything, a run that cannot fit: a clear line, not an allocator crash."""
    need, free = training_bytes(model_cfg, train_cfg, vocab_size, world_size), available_bytes(device)
    if free is not None and need > free:
        raise UserError(f"this run needs about {need / 2**30:.1f} GiB (model.hidden_size={model_cfg.hidden_size}, "
                        f"model.num_layers={model_cfg.num_layers}, train.batch_size={train_cfg.batch_size}, "
                        f"train.seq_len={train_cfg.seq_len}, {vocab_size} characters), more than the "
                        f"{free / 2**30:.1f} GiB free on {device}; make one of them smaller")
