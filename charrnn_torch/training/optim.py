"""The optimizer a run's train section names, and its learning-rate schedule."""
import math

import torch

from .config import OPTIMIZERS


# Optimizers whose fused kernel torch has for CPU only. Asked for on CUDA or MPS, they fail at
# the first step(), not when built, so the fallback below would never see the error.
CPU_ONLY_FUSED = (torch.optim.Adagrad,)


def make_optimizer(params, train_cfg, capturable=False):
    """train.optimizer over params. capturable: for a CUDA graph of the whole step (graphs.py), fused
    (so that found_inf skips a step on the device) and with the learning rate a tensor on the
    parameters' device, which the scheduler fills in place."""
    cls = getattr(torch.optim, OPTIMIZERS[train_cfg.optimizer])
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


def lr_factor(step, train_cfg, train_seconds=0.0):
    """The multiplier on train.lr before optimizer step `step` (0-based).

    With a wall-clock budget (train.max_minutes) the cosine's progress is the larger of the
    fractions of steps and of the budget spent, so it reaches its floor at whichever ends the run.
    """
    if step < train_cfg.warmup_steps:
        return (step + 1) / train_cfg.warmup_steps
    if train_cfg.lr_schedule == "cosine":
        progress = (step - train_cfg.warmup_steps) / max(1, train_cfg.max_steps - train_cfg.warmup_steps)
        if train_cfg.max_minutes:
            progress = max(progress, train_seconds / (60 * train_cfg.max_minutes))
        progress = min(1.0, progress)
        return train_cfg.min_lr_ratio + (1 - train_cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if train_cfg.lr_schedule == "step":
        return train_cfg.lr_gamma ** ((step - train_cfg.warmup_steps) // train_cfg.lr_step_size)
    return 1.0
