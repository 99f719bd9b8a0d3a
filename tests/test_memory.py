"""Proves retain_freed_memory() does what the speed-up relies on: after it, steps that
allocate and free big buffers, as a training step does, reuse the heap instead of
faulting fresh pages in, while under glibc's default policy the same steps fault in
every page again (the control, which shows the check can fail). Each case runs in a
fresh interpreter, since the setting is process-wide.

Run: pytest tests/test_runtime.py
"""
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from charrnn_torch.training.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def step():
    # Like a training step: a few big buffers alive at once, then freed. 40 MB each is
    # above glibc's largest dynamic mmap threshold, so its default policy is deterministic.
    bufs = [torch.empty(10 * 2**20).fill_(1.0) for _ in range(3)]
    del bufs
for _ in range(5):  # the heap grows to the step's high-water mark
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def faults(mode):
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@glibc_only
def test_steps_stop_faulting_in_fresh_pages():
    pages = 5 * 3 * 40 * 2**20 // 4096  # five steps of three 40 MB buffers, at 4 KiB a page
    assert faults("default") > pages // 2  # control: glibc unmaps big blocks and faults them in again
    assert faults("retain") < pages // 10


def test_reports_whether_it_applied():
    from charrnn_torch.training.memory import retain_freed_memory
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is glibc
