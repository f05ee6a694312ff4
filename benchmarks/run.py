"""cnnkernels benchmark suite: ours against torch.nn, side by side, one process.

    python benchmarks/run.py                  # every family, CPU (and CUDA if present)
    python benchmarks/run.py --quick          # fewer repetitions
    python benchmarks/run.py --ops pool --device cpu
    python benchmarks/run.py --ops models     # whole-model training steps and inference

Each case times our op and torch's on the same tensors, interleaved (ours,
torch, torch, ours, ...) so that machine noise hits both alike, and reports
medians, the speed-up over torch and the achieved bandwidth against a plain
copy of the same input measured in the same run (GB/s counts bytes read plus
bytes written, for the copy and for the ops alike).

Default CPU tensors stay at or under 25 MB: above glibc's 32 MB mmap
threshold every fresh output pays a page fault per 4 KB page, for torch and
for us alike, which would measure the allocator rather than the kernels.

Families plug in as case lists (see benchmarks/cases_pool.py): a function
returning Case objects for a device. Results are written as JSON and a PNG
chart under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cnnkernels  # noqa: E402
from harness import Case, time_pair, copy_bandwidth  # noqa: E402
import cases_conv  # noqa: E402
import cases_models  # noqa: E402
import cases_norm  # noqa: E402
import cases_pool  # noqa: E402

FAMILIES = {
    "pool": cases_pool.cases,
    "norm": cases_norm.cases,
    "conv": cases_conv.cases,
    "models": cases_models.cases,
}


def matmul_peak(device, dtype, rounds):
    """GFLOP/s of a large square matmul (torch's BLAS / cuBLAS): the
    arithmetic ceiling the convolution rows are compared with."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    fn = lambda: a @ b  # noqa: E731
    t, _ = time_pair(fn, fn, device, rounds)
    return 2 * n**3 / t / 1e9


def _progress(i, n, label):
    width = 30
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:60]:<60}")
    sys.stderr.flush()


def _fmt_row(cols, widths):
    return "  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def _cpu_model():
    """The processor's name (the development machines have changed kind:
    ratios against torch depend on whether its kernels use AVX-512)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                    help="where to run (default: cpu, plus cuda when a GPU is present)")
    ap.add_argument("--ops", default="all",
                    help="comma-separated families (" + ", ".join(FAMILIES) + ") or op names, e.g. max_pool2d")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for JSON and PNG")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append("cpu")
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available() and cnnkernels.cuda_built():
            devices.append("cuda")
        elif args.device == "cuda":
            sys.exit("benchmarks: --device cuda asked for, but no GPU or no CUDA build of cnnkernels")

    wanted = [w.strip() for w in args.ops.split(",") if w.strip()]
    rounds = 5 if args.quick else 15

    cases: list[Case] = []
    for dev in devices:
        for fam, make in FAMILIES.items():
            for c in make(dev, quick=args.quick):
                if "all" in wanted or fam in wanted or c.op in wanted:
                    cases.append(c)
    if not cases:
        sys.exit(f"benchmarks: no case matches --ops {args.ops}")

    results = []
    copy_cache = {}
    peak_cache = {}
    for i, c in enumerate(cases):
        _progress(i, len(cases), f"{c.device} {c.op} {c.config} {c.fmt} {c.mode}")
        ours, ref, nbytes, extra = c.setup()
        key = (c.device, c.copy_key)
        if key not in copy_cache:
            copy_cache[key] = copy_bandwidth(c.copy_tensor(), c.device, rounds)
        copy_gbs = copy_cache[key]
        t_ours, t_ref = time_pair(ours, ref, c.device, rounds)
        gbs = nbytes / t_ours / 1e9
        row = dict(
            device=c.device, op=c.op, config=c.config, fmt=c.fmt, mode=c.mode, dtype=c.dtype,
            shape=c.shape, ours_ms=t_ours * 1e3, torch_ms=t_ref * 1e3, speedup=t_ref / t_ours,
            gbs=gbs, copy_gbs=copy_gbs, pct_copy=100 * gbs / copy_gbs, bytes=nbytes,
        )
        row.update(extra)
        if "flops" in extra:
            pk = (c.device, c.dtype)
            if pk not in peak_cache:
                peak_cache[pk] = matmul_peak(c.device, getattr(torch, c.dtype), rounds)
            row["gflops"] = extra["flops"] / t_ours / 1e9
            row["torch_gflops"] = extra["flops"] / t_ref / 1e9
            row["peak_gflops"] = peak_cache[pk]
            row["pct_peak"] = 100 * row["gflops"] / peak_cache[pk]
        results.append(row)
        del ours, ref
    _progress(len(cases), len(cases), "done")
    sys.stderr.write("\n")

    threads = torch.get_num_threads()
    header = ["device", "op", "config", "fmt/mode", "torch ms", "ours ms", "speedup", "GB/s", "% copy"]
    rows = [
        [r["device"], r["op"], r["config"], f"{r['fmt']} {r['mode']} {r['dtype']}",
         f"{r['torch_ms']:.3f}", f"{r['ours_ms']:.3f}", f"{r['speedup']:.2f}x",
         f"{r['gbs']:.1f}", f"{r['pct_copy']:.0f}%"]
        for r in results
    ]
    if any("saved_ours" in r for r in results):  # bytes saved for backward, per element
        header.append("saved B/el ours/torch")
        for row, r in zip(rows, results):
            row.append(f"{r['saved_ours']:.2f}/{r['saved_torch']:.2f}" if "saved_ours" in r else "")
    if any("gflops" in r for r in results):  # arithmetic rate against the matmul peak
        header += ["GFLOP/s ours/torch", "% peak"]
        for row, r in zip(rows, results):
            if "gflops" in r:
                row += [f"{r['gflops']:.0f}/{r['torch_gflops']:.0f}", f"{r['pct_peak']:.0f}%"]
            else:
                row += ["", ""]
    widths = [max(len(str(x[k])) for x in rows + [header]) for k in range(len(header))]
    print(f"\ncnnkernels {cnnkernels.__version__}, torch {torch.__version__}, CPU threads {threads}, "
          f"CPU path {cnnkernels.cpu_isa()}, CPU {_cpu_model()}"
          + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    for dev, gbs in sorted({(k[0], v) for k, v in copy_cache.items()}):
        pass
    print("copy ceilings (GB/s, read + write): "
          + ", ".join(f"{k[0]} {k[1]}: {v:.1f}" for k, v in copy_cache.items()))
    print(_fmt_row(header, widths))
    print(_fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(_fmt_row(r, widths))

    if peak_cache:
        print("\nmatmul peaks (GFLOP/s): " + ", ".join(f"{d} {t}: {v:.0f}" for (d, t), v in peak_cache.items()))
        groups = {}
        for r in results:
            if "gflops" in r:
                groups.setdefault((r["device"], r["op"], r["fmt"], r["mode"], r["dtype"]), []).append(r["speedup"])
        print("geometric-mean speed-up over torch:")
        for k, v in groups.items():
            gm = statistics.geometric_mean(v)
            print(f"  {k[0]} {k[1]} {k[2]} {k[3]} {k[4]}: {gm:.2f}x over {len(v)} cases")

    os.makedirs(args.out, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = "-".join(devices)
    meta = dict(
        when=stamp, torch=torch.__version__, cnnkernels=cnnkernels.__version__, threads=threads,
        cpu_isa=cnnkernels.cpu_isa(), machine=platform.processor() or platform.machine(),
        cpu_model=_cpu_model(),
        gpu=torch.cuda.get_device_name() if "cuda" in devices else None, rounds=rounds,
    )
    jpath = os.path.join(args.out, f"bench-{tag}-{stamp}.json")
    with open(jpath, "w") as f:
        json.dump(dict(meta=meta, copy_gbs={f"{k[0]}:{k[1]}": v for k, v in copy_cache.items()},
                       matmul_gflops={f"{k[0]}:{k[1]}": v for k, v in peak_cache.items()},
                       results=results), f, indent=1)
    print(f"\nwrote {jpath}")
    if not args.no_chart:
        try:
            from chart import write_chart

            ppath = jpath[:-5] + ".png"
            write_chart(results, ppath, meta)
            print(f"wrote {ppath}")
        except ImportError as e:
            print(f"(no chart: {e})")
    return results


if __name__ == "__main__":
    main()
