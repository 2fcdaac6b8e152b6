"""Memory bandwidth the merge reaches: the fused Triton kernel on a GPU (or the CPU engine), vs the device's peak.

Usage::

    python benchmarks/kernel_bandwidth.py                      # CUDA: the fused kernel
    python benchmarks/kernel_bandwidth.py --device cpu         # the chunked CPU engine
    python benchmarks/kernel_bandwidth.py --numel 2e8 --skills 3 --peak-gbs 3350

For each method and stored form it merges one tensor of ``--numel`` elements (θ_G in
bf16, output bf16) with ``--skills`` skills already resident on the device, and
counts the bytes the merge must move once: θ_G read, every stored form read, the
output written. GB/s = bytes / median time. It prints that against the device's
peak bandwidth (``--peak-gbs``, else a table of known GPUs, else the measured
device-to-device copy) and against a plain ``torch`` copy of the same bytes on the
same device. The target for the GPU kernel is ≥ 80% of peak. Nothing here is run by
the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tvreg._format.codecs.forms import Dense, Int8Groups, StoredForm
from tvreg._merge import get_method, merge_tensor, plan_tensor

#: Peak DRAM bandwidth (GB/s, 1e9 bytes) of GPUs by name fragment, from vendor data sheets.
KNOWN_PEAKS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "L40S": 864.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
}
METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.2},
    "dare_ties": {"drop_rate": 0.9, "seed": 1},
    "dare_linear": {"drop_rate": 0.9, "seed": 1},
}


def make_forms(kind: str, numel: int, skills: int, device: str) -> list[StoredForm]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    forms: list[StoredForm] = []
    for _ in range(skills):
        if kind == "bf16":
            values = (torch.randn(numel, generator=gen) * 1e-3).to(torch.bfloat16)
            forms.append(Dense(shape=(numel,), values=values.to(device)))
        elif kind == "fp32":
            forms.append(Dense(shape=(numel,), values=(torch.randn(numel, generator=gen) * 1e-3).to(device)))
        else:  # int8 with one fp32 scale per 128 elements
            q = torch.randint(-127, 128, (numel,), dtype=torch.int8, generator=gen)
            scales = torch.rand(-(-numel // 128), generator=gen) * 1e-5
            forms.append(Int8Groups(shape=(numel,), q=q.to(device), scales=scales.to(device), group_size=128))
    return forms


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call (which also compiles the kernel)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_gbs(device: str, given: float | None, copy_gbs: float) -> tuple[float, str]:
    if given:
        return given, "--peak-gbs"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for fragment, peak in KNOWN_PEAKS.items():
            if fragment in name:
                return peak, f"data sheet of {name}"
    return copy_gbs, "measured copy (no known peak; pass --peak-gbs)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--numel", type=float, default=2**28, help="elements of the merged tensor (default 2^28)")
    ap.add_argument("--skills", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-gbs", type=float, help="the device's peak memory bandwidth in GB/s")
    ap.add_argument("--forms", default="bf16,int8,fp32", help="stored forms to try (bf16, int8, fp32)")
    args = ap.parse_args()
    device, numel = args.device, int(args.numel)
    if device == "cuda":
        if not torch.cuda.is_available():
            print("error: torch sees no CUDA GPU; run with --device cpu to measure the CPU engine.")
            return 2
        from tvreg.kernels.fused_merge import merge_tensor_fused as merge_fn

        print(f"device: {torch.cuda.get_device_name()}")
    else:
        merge_fn = merge_tensor
        print(f"device: CPU, {torch.get_num_threads()} torch threads")

    general = (torch.randn(numel) * 0.02).to(torch.bfloat16).to(device)
    src = torch.empty(numel * 4, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), device, args.repeats)
    copy_gbs = 2 * src.numel() / copy_s / 1e9
    peak, source = peak_gbs(device, args.peak_gbs, copy_gbs)
    print(f"plain copy of {src.numel() / 1e9:.2f} GB: {copy_gbs:,.1f} GB/s (read + write)")
    print(f"peak: {peak:,.1f} GB/s ({source})\n")
    print(f"{'method':<16} {'form':<6} {'bytes GB':>9} {'ms':>9} {'GB/s':>9} {'% peak':>7} {'% copy':>7}")
    for kind in args.forms.split(","):
        forms = make_forms(kind, numel, args.skills, device)
        moved = 2 * numel * 2 + sum(f.nbytes for f in forms)
        for method, params in METHODS.items():
            m = get_method(method)
            recipe = m.recipe([0.3] * args.skills, ["task_vector"] * args.skills, m.resolve_params(params))
            names = [f"s{k}" for k in range(args.skills)]
            # The plan (TIES cutoffs, DARE keys) is computed on the CPU, once, as install does.
            plan = plan_tensor(recipe, "w", names, [_to_cpu(f) for f in forms], numel)
            seconds = timed(
                lambda plan=plan, forms=forms: merge_fn(plan, general, forms, out_dtype=torch.bfloat16),
                device,
                args.repeats,
            )
            gbs = moved / seconds / 1e9
            print(
                f"{method:<16} {kind:<6} {moved / 1e9:9.2f} {seconds * 1e3:9.2f} {gbs:9.1f} "
                f"{100 * gbs / peak:6.1f}% {100 * gbs / copy_gbs:6.1f}%"
            )
    return 0


def _to_cpu(form: StoredForm) -> StoredForm:
    import dataclasses

    return dataclasses.replace(
        form,
        **{
            f.name: getattr(form, f.name).cpu()
            for f in dataclasses.fields(form)
            if isinstance(getattr(form, f.name), torch.Tensor)
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
