"""The process a run lives in: its device and backends, its random number generators, its signals."""
import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch

from .distributed import DistInfo
from ..errors import UserError

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


def device_refusal(train_cfg, device, world_size):
    """Why a run (its train section) cannot train on device, in one line, or None. MPS has no
    float64, and DDP's backends (nccl, gloo) reduce CUDA and CPU tensors."""
    if device.type != "mps":
        return None
    if train_cfg.dtype == "float64":
        return "device=mps: MPS has no float64; use train.dtype=float32, or device=cpu for float64"
    if world_size > 1:
        return "device=mps: DDP reduces CUDA or CPU tensors, not MPS ones; train on mps in one process"
    return None


def check_device(train_cfg, device, world_size):
    why = device_refusal(train_cfg, device, world_size)
    if why:
        raise UserError(why)


def device_notices(train_cfg, device):
    """One line for each thing asked for that this device does without, and how the run goes on."""
    notices = []
    if train_cfg.amp != "none" and device.type != "cuda":
        notices.append(f"train.amp={train_cfg.amp}: autocast runs on CUDA only; this run on {device} trains in "
                       f"{train_cfg.dtype}")
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
