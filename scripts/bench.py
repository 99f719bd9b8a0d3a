"""Training throughput of every implementation, side by side in one run.

    python scripts/bench.py                       # CPU: tutorial and cpu shapes
    python scripts/bench.py --device cuda         # GPU: gpu and gpu-L3 shapes, fp32, TF32 and bf16
    python scripts/bench.py --shapes smoke --precisions fp32,tf32,bf16 --repeats 1   # a seconds-long dry run
    python scripts/bench.py --shapes tutorial --json out.json
"""
import argparse
import json
import platform
import sys
from dataclasses import asdict

import torch

from charrnn_torch import bench
from charrnn_torch.runtime import retain_freed_memory


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(bench.SHAPES)}")
    p.add_argument("--precisions", default=None,
                   help=f"comma-separated, from {', '.join(bench.PRECISIONS)} (default: all three on CUDA, "
                        f"fp32 on CPU); tf32 changes nothing on a CPU")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per implementation (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--small-threads", type=int, default=1,
                   help="threads for the tutorial shape, where thread hand-offs cost more than they save")
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="retain: keep freed memory for reuse, as training does (default); default: glibc's "
                        "own policy, to see what that setting is worth")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    shapes = args.shapes.split(",") if args.shapes else (
        ["gpu", "gpu-L3"] if device.type == "cuda" else ["tutorial", "cpu"])
    for s in shapes:
        if s not in bench.SHAPES:
            print(f"error: unknown shape {s!r}; choose from {', '.join(bench.SHAPES)}", file=sys.stderr)
            return 2
    precisions = args.precisions.split(",") if args.precisions else (
        list(bench.PRECISIONS) if device.type == "cuda" else ["fp32"])
    for prec in precisions:
        if prec not in bench.PRECISIONS:
            print(f"error: unknown precision {prec!r}; choose from {', '.join(bench.PRECISIONS)}", file=sys.stderr)
            return 2
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    retain = args.malloc == "retain" and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    default_threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}; {default_threads} threads; "
          f"freed memory {'retained' if retain else 'returned to the OS (glibc default)'}")

    rows, extra = [], {"device": str(device), "device_name": name, "torch": torch.__version__,
                       "malloc": "retain" if retain else "default", "peaks": {}}
    for prec in precisions:
        amp = bench.set_precision(prec)
        suffix = "" if precisions == ["fp32"] and device.type == "cpu" else f"-{prec}"
        for s in shapes:
            threads = args.small_threads if s == "tutorial" and device.type == "cpu" else default_threads
            torch.set_num_threads(threads)
            shape_rows, peak = bench.run_shape(s, device, args.repeats, amp_dtype=amp, threads=threads,
                                                retain_memory=retain)
            torch.set_num_threads(default_threads)
            for r in shape_rows:
                r.shape = s + suffix
            rows += shape_rows
            extra["peaks"][s + suffix] = peak
            print(f"{s + suffix}: measured {'bf16' if amp else 'fp32'} matmul peak {peak:.1f} GFLOP/s"
                  f"{' (TF32 on)' if device.type == 'cuda' and prec == 'tf32' else ''} with {threads} thread(s)")
    print()
    print(bench.format_table(rows))
    print()
    sampling = {}
    bench.set_precision("tf32" if "tf32" in precisions else precisions[0])
    for s in shapes:
        threads = args.small_threads if s == "tutorial" and device.type == "cpu" else default_threads
        torch.set_num_threads(threads)
        sampling[s] = bench.sampling_throughput(s, device)
        torch.set_num_threads(default_threads)
        print(f"sampling ({s}, CharRNN fused): {sampling[s][1]:,.0f} chars/s one stream, "
              f"{sampling[s][64]:,.0f} chars/s batch of 64")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**extra, "rows": [asdict(r) for r in rows],
                       "sampling": {s: {str(k): v for k, v in d.items()} for s, d in sampling.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
