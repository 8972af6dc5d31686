"""The step profile's Markdown (``benchmarks/step_profile.py``; the measurement: ``copa.eval.step_profile``)."""

from __future__ import annotations

from typing import Any


def _iqr(s: dict[str, float], digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]"


def step_profile_markdown(record: dict[str, Any]) -> str:
    """``record``: the benchmark's JSON (``settings`` and one ``widths`` entry per model width, the
    first the profile's own)."""
    s = record["settings"]
    lines = [
        f"# One {s['profile']} pretraining step on {s['threads']} CPU threads", "",
        f"Commit `{s['commit']}`, torch {s['torch']}, {s['date']}. The real step: the profile's batch "
        f"({s['batch']}) drawn by `PretrainTask` from `{s['root']}`, the engine's update (AdamW) and the "
        f"momentum update, after the warm-up (detector on). {s['rounds']} rounds after {s['warmup']} untimed "
        f"steps, each followed by a {record['widths'][0]['matmul']['side']}² float32 matmul in the same process; "
        "median [interquartile range]. GFLOP: counted forward + backward FLOPs (matmuls, linears, convolutions, "
        "attention). Ratio: the step's GFLOP/s over the matmul's, per round. Ceiling: the matmul kernels' own "
        "GFLOP/s at the step's shapes (torch.profiler self time) over the matmul's: the ratio if nothing but "
        "those kernels cost time.", "",
        "| model width | data s | step s | GFLOP | GFLOP/s (with data) | matmul GFLOP/s | ratio | ratio w/o data | ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in record["widths"]:
        kernels = w["profile"]["matmul_kernels"]
        lines.append(f"| {w['width']} | {_iqr(w['data_s'], 3)} | {_iqr(w['step_s'], 3)} | {w['gflop']['median']:.1f} | "
                     f"{_iqr(w['gflop_per_s'], 1)} | {_iqr(w['matmul']['gflop_per_s'], 0)} | {_iqr(w['ratio'], 2)} | "
                     f"{_iqr(w['ratio_without_data'], 2)} | {kernels['ceiling_ratio']:.2f} |")
    own = record["widths"][0]
    prof = own["profile"]
    lines += ["", f"## Top operators at width {own['width']} (one profiled step, self time {prof['self_ms']:.0f} ms)", "",
              "| operator | calls | self ms | share |", "| --- | --- | --- | --- |"]
    lines += [f"| `{op['op']}` | {op['calls']} | {op['self_ms']:.1f} | {op['share']:.1%} |" for op in prof["top_ops"]]
    kernels = prof["matmul_kernels"]
    lines += ["", f"Matmul kernels (mm, addmm, bmm, attention, convolution): {kernels['self_ms']:.0f} ms, "
              f"{kernels['share']:.0%} of the step, at {kernels['gflop_per_s']:.0f} GFLOP/s. Python between the operators "
              f"of the scopes (their self time): {prof['python_ms']:.0f} ms, {prof['python_ms'] / prof['self_ms']:.0%}.", "",
              "## Time per objective", "",
              "| scope | forward ms | backward ms | share of the step |", "| --- | --- | --- | --- |"]
    lines += [f"| {o['scope']} | {o['forward_ms']:.1f} | {o['backward_ms']:.1f} | {o['share']:.1%} |" for o in prof["objectives"]]
    lines += ["", f"AdamW step {prof['optimizer_ms']:.1f} ms, momentum update and warm-up rule {prof['after_step_ms']:.1f} ms. "
              "`shared`: the caption-guided encoding that ITM reuses and whose pre-selection layers MLM and PrefixLM reuse; "
              "`other`: backward nodes of ops outside every scope (the loss sum, gradient accumulation).", ""]
    return "\n".join(lines)
