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

def resolve_device(name, dist_info=DistInfo()):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available on this machine; use device=cpu or auto")
        index = int(name[5:]) if ":" in name else dist_info.local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    return torch.device("cpu")


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
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": random.getstate(),
    }


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
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
