"""CUDA kernels side by side: achieved bandwidth vs a device-to-device copy, speed vs torch op chains.

For every op of libsatedge_kernels (preprocessing uint16 / 12-bit -> FP16 / FP32, cloud fraction,
global and local RX, NSI score and sparsification) this builds the library fresh with nvcc for
the GPU at hand (or loads $SATEDGE_KERNELS_LIB), then in interleaved rounds times, with CUDA
events on one stream:

- the kernel (every status checked),
- the same computation written as a chain of torch ops (what one would write without the kernel),
- a device-to-device copy of a large buffer (``dst.copy_(src)``), the bandwidth yardstick.

It prints per op the kernel time, the bytes it must move (inputs read once, outputs written once),
the achieved bandwidth as a share of the measured copy bandwidth (goal >= 70 % for preprocessing
and cloud fraction, which are memory-bound), and the speed ratio over the torch chain (goal >= 3x),
plus the largest difference between the two results as a sanity check. Medians over rounds;
absolute times drift, read the ratios.

    python bench/kernels.py [--scale 1.0] [--rounds 5] [--iters 20]

Needs an NVIDIA GPU, torch with CUDA, and nvcc (or $SATEDGE_KERNELS_LIB). Exit status: 0 after
measuring; 2 when any of those is missing (the message says which), nothing measured.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # 'python bench/kernels.py' puts bench/ first on sys.path
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import datetime  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from typing import Callable, List, Tuple  # noqa: E402

import numpy as np  # noqa: E402

EXIT_NO_GPU = 2


def _no_gpu(why: str) -> int:
    print("bench/kernels.py measures CUDA kernels and needs a GPU: %s. Nothing was measured." % why, file=sys.stderr)
    return EXIT_NO_GPU


def _timer(torch, iters: int) -> Callable[[Callable[[], None]], float]:
    def time_ms(fn):
        for _ in range(2):
            fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / iters
    return time_ms


def _box(torch, t, half):
    """Sums over (2 half + 1)-square windows of the last two axes, cut at the border (integral images)."""
    k = 2 * half + 1
    p = torch.nn.functional.pad(t, (half + 1, half, half + 1, half)).cumsum(-2).cumsum(-1)
    return p[..., k:, k:] - p[..., :-k, k:] - p[..., k:, :-k] + p[..., :-k, :-k]


def build_cases(torch, lib, scale: float):
    """``[(name, bytes_moved, kernel_fn, torch_fn, compare_fn, memory_bound)]`` on fresh random data."""
    from engines.ops import nsi as nsi_ref
    from engines.ops import preprocess as pp
    dev, stream = torch.device("cuda"), torch.cuda.current_stream().cuda_stream
    gen = torch.Generator(device=dev).manual_seed(0)
    side = max(64, int(4096 * scale ** 0.5) // 64 * 64)
    cases = []

    bands = 4
    dn = torch.randint(1, 4096, (bands, side, side), device=dev, dtype=torch.int32, generator=gen).to(torch.int16)
    packed = torch.from_numpy(pp.pack_u12(dn.cpu().numpy().astype(np.uint16))).to(dev)
    spans = ((50, 10), (1, 0.5), (1e-3, 1e-3), (1, -0.5))  # dark, gain, scale, offset: value = rand * span + low
    calib = [torch.rand(bands, device=dev, generator=gen) * span + low for span, low in spans]
    cal_ptrs = [c.data_ptr() for c in calib]
    shape, window = (bands, side, side), (0, 0, side, side)
    dark, gain, scl, off = (c.view(-1, 1, 1) for c in calib)

    def chain(x, half):
        y = ((x.float() - dark) * gain) * scl + off
        return y.half() if half else y

    def unpack(p):
        b = p.view(-1, 3).int()
        return torch.stack([b[:, 0] | ((b[:, 1] & 15) << 8), (b[:, 1] >> 4) | (b[:, 2] << 4)], 1).view(shape)
    for packing, src, src_bytes in (("u16", dn, dn.numel() * 2), ("u12", packed, packed.numel())):
        for dtype, half in (("float16", True), ("float32", False)):
            out = torch.empty(shape, device=dev, dtype=torch.float16 if half else torch.float32)
            kernel = (lambda p=packing, s=src, o=out, d=dtype: lib.preprocess(
                p, s.data_ptr(), shape, window, cal_ptrs, o.data_ptr(), d, stream))
            ref = (lambda s=src, h=half: chain(s.int() & 0xFFFF, h)) if packing == "u16" else \
                (lambda s=src, h=half: chain(unpack(s), h))
            cases.append(("preprocess %s->%s %dx%dx%d" % (packing, dtype, *shape), src_bytes + out.numel() *
                          out.element_size(), kernel, ref, lambda o=out, r=ref: (o.float(), r().float()), True))

    tile, n_tiles = 64 * 64, max(16, int(16384 * scale))
    mask = (torch.rand(n_tiles, tile, device=dev, generator=gen) < 0.4).to(torch.uint8)
    frac = torch.empty(n_tiles, device=dev)
    cases.append(("cloud fraction %d tiles x %d px" % (n_tiles, tile), mask.numel() + frac.numel() * 4,
                  lambda: lib.cloud_fraction(mask.data_ptr(), n_tiles, tile, frac.data_ptr(), stream),
                  lambda: (mask != 0).sum(1, dtype=torch.int32).double().div(tile).float(),
                  lambda: (frac, (mask != 0).sum(1, dtype=torch.int32).double().div(tile).float()), True))

    for b, hw in ((8, side), (128, max(64, side // 8))):
        cube = torch.randn(b, hw, hw, device=dev, generator=gen) + 1
        mean = torch.randn(b, device=dev, generator=gen)
        a = torch.randn(b, b, device=dev, generator=gen)
        inv = torch.linalg.inv(a @ a.T / b + torch.eye(b, device=dev))
        score = torch.empty(hw, hw, device=dev)

        def rx_chain(c=cube, m=mean, i=inv, n=b):
            d = c.view(n, -1) - m[:, None]
            return ((i @ d) * d).sum(0).view(c.shape[1:])
        cases.append(("rx global %d bands %dx%d" % (b, hw, hw), cube.numel() * 4 + score.numel() * 4,
                      lambda c=cube, m=mean, i=inv, s=score: lib.rx_global(c.data_ptr(), "float32", c.shape,
                                                                           m.data_ptr(), i.data_ptr(), s.data_ptr(),
                                                                           stream),
                      rx_chain, lambda s=score, f=rx_chain: (s, f()), False))

    for d, outer, inner, hw in ((8, 9, 3, max(64, side // 8)), (20, 15, 5, max(64, side // 16))):
        z = torch.randn(d, hw, hw, device=dev, generator=gen)
        score = torch.empty(hw, hw, device=dev)

        def local_chain(z=z, d=d, outer=outer, inner=inner):
            zz = z[:, None] * z[None]
            ones = torch.ones(1, *z.shape[1:], device=dev)
            n = _box(torch, ones, outer // 2) - _box(torch, ones, inner // 2)
            mu = (_box(torch, z, outer // 2) - _box(torch, z, inner // 2)) / n
            cov = (_box(torch, zz, outer // 2) - _box(torch, zz, inner // 2)) / n - mu[:, None] * mu[None]
            cov = cov.permute(2, 3, 0, 1)
            cov = cov + (1e-3 * cov.diagonal(dim1=-2, dim2=-1).sum(-1) / d)[..., None, None] * torch.eye(d, device=dev)
            diff = (z - mu).permute(1, 2, 0)[..., None]
            return (diff * torch.linalg.solve(cov, diff)).sum((-2, -1))
        cases.append(("rx local %d bands %d/%d %dx%d" % (d, outer, inner, hw, hw), z.numel() * 4 + score.numel() * 4,
                      lambda z=z, s=score, o=outer, i=inner: lib.rx_local(z.data_ptr(), "float32", z.shape, o, i, 1e-3,
                                                                          s.data_ptr(), stream),
                      local_chain, lambda s=score, f=local_chain: (s, f()), False))

    rows = cols = side
    g = torch.randn(rows, cols, device=dev, generator=gen)
    k = nsi_ref.keep_count(rows * cols, 0.01)
    score = torch.empty(rows * cols, device=dev)
    ws_bytes = lib.nsi_workspace_size(rows, cols)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    idx, val, thr = (torch.empty(k, dtype=torch.int32, device=dev), torch.empty(k, device=dev),
                     torch.empty(1, device=dev))

    def nsi_chain(g=g):
        x = g[None, None]
        pool = torch.nn.functional.avg_pool2d
        mean = pool(x, 3, 1, 1, count_include_pad=False)
        var = pool(x * x, 3, 1, 1, count_include_pad=False) - mean * mean
        am, sd = mean.abs(), var.clamp_min(0).sqrt()
        rho = torch.where(am + sd > 0, am / (am + sd), torch.zeros_like(am))
        return (g.abs() * (0.5 + 0.5 * rho[0, 0])).flatten()

    def sparsify_chain():
        top = torch.topk(nsi_chain(), k).indices.sort().values
        return top, g.flatten()[top]
    cases.append(("nsi score %dx%d p=3" % (rows, cols), g.numel() * 8,
                  lambda: lib.nsi_score(g.data_ptr(), rows, cols, 3, 0.5, 1.0, "coherence", score.data_ptr(), stream),
                  nsi_chain, lambda: (score, nsi_chain()), False))
    cases.append(("nsi sparsify %dx%d k=%d" % (rows, cols, k), g.numel() * 4 + k * 8,
                  lambda: lib.nsi_sparsify(g.data_ptr(), rows, cols, 3, 0.5, 1.0, "coherence", k, ws.data_ptr(),
                                           ws_bytes, idx.data_ptr(), val.data_ptr(), thr.data_ptr(), stream),
                  sparsify_chain, lambda: (idx.long().float(), sparsify_chain()[0].float()), False))
    return cases


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="problem size factor (default 1: 4 x 4096 x 4096 frames)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)

    from engines.runners.devicebuf import gpu_present
    has_gpu, what = gpu_present()
    if not has_gpu:
        return _no_gpu(what)
    try:
        import torch
    except ImportError:
        return _no_gpu("torch is not installed")
    if not torch.cuda.is_available():
        return _no_gpu("torch %s has no CUDA device (a CPU build?)" % torch.__version__)
    from engines.errors import UserError
    from engines.ops.cuda_lib import ENV_VAR, KernelLibrary, build_library
    major, minor = torch.cuda.get_device_capability()
    try:
        path = os.environ.get(ENV_VAR) or build_library(tempfile.mkdtemp(prefix="satedge-bench-"),
                                                        archs=("%d%d" % (major, minor),))
        lib = KernelLibrary(path)
    except UserError as exc:
        return _no_gpu(str(exc))

    print("%s, sm_%d%d, torch %s, %s; library %s" % (torch.cuda.get_device_name(), major, minor, torch.__version__,
                                                    datetime.date.today().isoformat(), path))
    time_ms = _timer(torch, args.iters)
    copy_src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    cases = build_cases(torch, lib, args.scale)
    rows: List[Tuple[str, float, float, float, float, bool, float]] = []
    for name, nbytes, kernel, chain, compare, memory_bound in cases:
        k_ms, t_ms, copy_gbs = [], [], []
        for r in range(args.rounds):  # interleaved, order rotating, so drift hits all three alike
            jobs = [lambda: k_ms.append(time_ms(kernel)), lambda: t_ms.append(time_ms(chain)),
                    lambda: copy_gbs.append(2 * copy_src.numel() / time_ms(lambda: copy_dst.copy_(copy_src)) / 1e6)]
            for job in jobs[r % 3:] + jobs[:r % 3]:
                job()
        got, ref = compare()
        torch.cuda.synchronize()
        diff = float(((got.float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-6)).max())
        k, t, c = statistics.median(k_ms), statistics.median(t_ms), statistics.median(copy_gbs)
        rows.append((name, k, nbytes / k / 1e6, c, t / k, memory_bound, diff))

    print("%-42s %9s %9s %8s %9s %8s %10s" % ("op", "kernel ms", "GB/s", "of copy", "vs torch", "goals", "max rel d"))
    for name, k, gbs, c, ratio, memory_bound, diff in rows:
        goals = ("bw %s " % ("ok" if gbs >= 0.7 * c else "NO") if memory_bound else "") + \
            "3x %s" % ("ok" if ratio >= 3 else "NO")
        print("%-42s %9.3f %9.1f %7.0f%% %8.1fx %8s %10.2e" % (name, k, gbs, 100 * gbs / c, ratio, goals, diff))
    print("copy bandwidth (read + write) median %.1f GB/s; 'max rel d' compares the kernel with the torch chain "
          "(the chain's FP16/float32 order differs; NSI sparsify compares indices)." % statistics.median(
              [r[3] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
