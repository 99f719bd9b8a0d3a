"""Every collective a training run makes, in one place. With one process each is a no-op.

``from_env``, ``start`` and ``finish`` are a run's process-group lifecycle (torchrun's environment);
the rest are the collectives. Rank r of N owns streams [r·B/N, (r+1)·B/N) of the same layout one process uses, so the
collectives are few: rank 0 picks the run directory, validation sums are added up, the carried
state is gathered into one (L, B, H) tensor for checkpoints, and the ranks agree on when to stop.
"""
import gc
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.corpus import load_corpus as load_corpus_here


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0


def _scalar_device(device):
    return device if device.type == "cuda" else torch.device("cpu")  # nccl reduces on the GPU


def broadcast_path(path, info):
    """Rank 0's path on every rank (it may have picked a numbered sibling directory)."""
    if info.world_size == 1:
        return Path(path)
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def sum_total_and_count(total, count, info):
    """(sum over ranks of total, sum over ranks of count); total is a float64 tensor."""
    if info.world_size == 1:
        return total, count
    both = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    dist.all_reduce(both)
    return both[0], both[1].item()


def gather_state(h, info):
    """The carried state of every rank's streams, concatenated along the batch, on the CPU."""
    if h is None:
        return None
    if info.world_size == 1:
        return h.detach().cpu()
    parts = [torch.empty_like(h) for _ in range(info.world_size)]
    dist.all_gather(parts, h.detach().contiguous())
    return torch.cat(parts, dim=1).cpu()


def my_streams(h_global, info):
    """This rank's slice of a gathered state: streams [r·B/N, (r+1)·B/N) along dim 1."""
    per_rank = h_global.shape[1] // info.world_size
    return h_global[:, info.rank * per_rank:(info.rank + 1) * per_rank]


def agree_max(value, info, device):
    """The largest of every rank's value. Ranks see a signal at different steps, and their
    clocks differ: acting on their own values, one rank would wait forever in a collective
    that the others have left, or set another learning rate."""
    if info.world_size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_scalar_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def barrier(info):
    if info.world_size > 1:
        dist.barrier()


def wrap_ddp(model, device, dist_info):
    """The model under DistributedDataParallel when there is more than one process."""
    if dist_info.world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def load_corpus(data_cfg, info, progress, base_vocab, log):
    """The run's corpus on every rank (data.corpus.load_corpus). Alone, a cache built now is installed
    only once the run passes its checks (Corpus.keep). Under DDP each node's first rank builds and
    installs it while the others wait, then they all map it."""
    if info.world_size == 1:
        return load_corpus_here(data_cfg, progress, base_vocab, log, defer_install=True)
    corpus = None
    if info.local_rank == 0:
        corpus = load_corpus_here(data_cfg, progress and info.is_main, base_vocab, log)
    barrier(info)
    return corpus or load_corpus_here(data_cfg, False, base_vocab, lambda *a: None)


def from_env(env):
    """This process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or a lone process."""
    return DistInfo(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                    local_rank=int(env.get("LOCAL_RANK", 0)))


def start(device_name, info):
    """The process group of a run on device_name (the config's device): nccl on CUDA, else gloo."""
    # DDP imports torch._dynamo on its first use. Imported once a process group exists, it keeps
    # references to the group that destroy_process_group() cannot drop (see finish).
    import torch._dynamo  # noqa: F401
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                            rank=info.rank, world_size=info.world_size)


def finish(info):
    """Free the process group before Python exits, its threads joined. A group still alive at exit
    keeps gloo's worker threads running; one that then releases the last collective's tensors
    needs the GIL while the interpreter is finalizing, and the process aborts ("terminate called
    without an active exception", pytorch/pytorch#190489). So nothing may still hold the group:
    not the run's DDP wrapper (dropped by the trainer, and in reference cycles until collected),
    not torch._dynamo (imported before the group, in start)."""
    if info.world_size > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
