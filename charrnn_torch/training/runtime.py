"""The process a run lives in: its device and backends, the optimizer built for it, its random
number generators, its signals, its memory."""
import contextlib
import ctypes
import ctypes.util
import os
import platform
import random
import signal
import threading

import numpy as np
import torch

from . import config as config_mod
from .distributed import DistInfo
from ..errors import UserError
from ..model.cells import CELL_CLASSES

# glibc's mallopt() parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory():
    """Make glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Why: a CPU training step allocates and frees the same few large buffers
    (each (T, B, H) activation and its gradient, 16-32 MB at the default sizes)
    every step. By default glibc serves blocks that large with a fresh mmap and
    unmaps them on free, so every step pays page faults and the kernel's zeroing
    for memory it just gave back: 7-9% of a step at the bench's `cpu` shape.
    Keeping the blocks is what PyTorch's CPU tuning guide gets by preloading
    jemalloc or tcmalloc, and what its CUDA caching allocator does on GPU. The
    cost is resident memory: the process keeps its high-water mark, and more
    (the default training run's peak RSS went from 551 MB to 698 MB).

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


# What needs float64 beyond training (probabilities, scores, the look-inside page, export's checks).
NEEDS_FLOAT64 = ("sampling, scoring, the look-inside page and export compute in float64, which MPS lacks; use "
                 "--device cpu (training does run on mps)")


def auto_device(cuda, mps):
    """device=auto: CUDA, then Apple's MPS, then the CPU."""
    return "cuda" if cuda else "mps" if mps else "cpu"


def mps_available():
    return torch.backends.mps.is_available()


def resolve_device(name, dist_info=DistInfo(), mps=True):
    """The torch.device of a device name (config.is_device_name). mps=False: for work in float64,
    which MPS lacks: auto never picks it, and mps is refused."""
    if name == "auto":
        name = auto_device(torch.cuda.is_available(), mps and mps_available())
    if name == "mps":
        if not mps:
            raise UserError(f"device=mps: {NEEDS_FLOAT64}")
        if not mps_available():
            why = ("this torch was built without MPS" if not torch.backends.mps.is_built() else
                   "this machine has no MPS device (an Apple-silicon Mac with macOS 12.3 or later has one)")
            raise UserError(f"device=mps but {why}; use device=cpu or auto")
        return torch.device("mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available on this machine; use device=cpu or auto")
        index = int(name[5:]) if ":" in name else dist_info.local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    return torch.device("cpu")


def device_refusal(cfg, device, world_size):
    """Why this run cannot train on its device, in one line, or None. MPS has no float64, and DDP's
    backends (nccl, gloo) reduce CUDA and CPU tensors."""
    if device.type != "mps":
        return None
    if cfg.train.dtype == "float64":
        return "device=mps: MPS has no float64; use train.dtype=float32, or device=cpu for float64"
    if world_size > 1:
        return "device=mps: DDP reduces CUDA or CPU tensors, not MPS ones; train on mps in one process"
    return None


def check_device(cfg, device, world_size):
    why = device_refusal(cfg, device, world_size)
    if why:
        raise UserError(why)


def device_notices(cfg, device):
    """One line for each thing asked for that this device does without, and how the run goes on."""
    notices = []
    if cfg.train.amp != "none" and device.type != "cuda":
        notices.append(f"train.amp={cfg.train.amp}: autocast runs on CUDA only; this run on {device} trains in "
                       f"{cfg.train.dtype}")
    if not has_float64(device):
        notices.append("device=mps: MPS has no float64, so TensorBoard's samples and hidden-state heat map, and "
                       "train.dynamic_eval, use a CPU copy of the model; loss/val is summed in float32")
    return notices


def has_float64(device):
    return device.type != "mps"


def sum_dtype(device):
    """What sums of many losses accumulate in: float64 where the device has it."""
    return torch.float64 if has_float64(device) else torch.float32


def configure_backends(device, train_cfg):
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = train_cfg.tf32
        torch.backends.cudnn.allow_tf32 = train_cfg.tf32
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)


# Optimizers whose fused kernel torch has for CPU only. Asked for on CUDA or MPS, they fail at
# the first step(), not when built, so the fallback below would never see the error.
CPU_ONLY_FUSED = (torch.optim.Adagrad,)


def make_optimizer(params, train_cfg, capturable=False):
    """train.optimizer over params. capturable: for a CUDA graph of the whole step (graphs.py), fused
    (so that found_inf skips a step on the device) and with the learning rate a tensor on the
    parameters' device, which the scheduler fills in place."""
    cls = getattr(torch.optim, config_mod.OPTIMIZERS[train_cfg.optimizer])
    if capturable:
        lr = learning_rate(train_cfg.lr, params, capturable)
        return cls(params, lr=lr, weight_decay=train_cfg.weight_decay, fused=True, capturable=True)
    return fast_optimizer(cls, params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                          **({"momentum": 0.9} if train_cfg.optimizer == "sgd" else {}))


def learning_rate(value, params, capturable):
    """A param group's learning rate: a float, or for a captured step a tensor on the parameters'
    device (a float would be baked into the graph)."""
    return torch.tensor(value, dtype=params[0].dtype, device=params[0].device) if capturable else value


def fast_optimizer(cls, params, **kw):
    """The fused (one kernel for all parameters) variant where this torch and device have
    one: at char-RNN sizes the per-parameter loop of the default costs more than the maths."""
    params = list(params)
    if not (issubclass(cls, CPU_ONLY_FUSED) and any(p.device.type != "cpu" for p in params)):
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, **kw)


def rng_state(device):
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "mps": torch.mps.get_rng_state() if device.type == "mps" else None,  # dropout masks drawn on MPS
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": random.getstate(),
    }


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT exits at once."""
    flag = {"signum": None}

    def handler(signum, frame):
        if flag["signum"] is not None and signum == signal.SIGINT:
            os._exit(130)  # the user insists: leave now, touch no file
        flag["signum"] = signum

    # Signal handlers can only be installed from the main thread (not, say, under a test runner's worker).
    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def training_bytes(cfg, vocab_size, world_size=1):
    """About how much memory training needs per process: weights, gradients and two optimizer
    moments (Adam's; an upper bound for the others), and the (T·B, ·) buffers of each layer's
    G gates and of the logits with their gradients."""
    model_cfg, train_cfg = cfg.model, cfg.train
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


def check_fits_in_memory(cfg, vocab_size, device, world_size=1):
    """Refuse, before allocating anything, a run that cannot fit: a clear line, not an allocator crash."""
    need, free = training_bytes(cfg, vocab_size, world_size), available_bytes(device)
    if free is not None and need > free:
        model_cfg, train_cfg = cfg.model, cfg.train
        raise UserError(f"this run needs about {need / 2**30:.1f} GiB (model.hidden_size={model_cfg.hidden_size}, "
                        f"model.num_layers={model_cfg.num_layers}, train.batch_size={train_cfg.batch_size}, "
                        f"train.seq_len={train_cfg.seq_len}, {vocab_size} characters), more than the "
                        f"{free / 2**30:.1f} GiB free on {device}; make one of them smaller")
