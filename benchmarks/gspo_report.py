"""``gspo_benchmark.py --report``: the markdown tables of a results file."""

from __future__ import annotations

from benchmarks.bench_common import GB


def cell(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def report(entries: list[dict]) -> str:
    lines = ["| model | backend | kind | status | step s (mean of timed) | warm-up s | rollout tok/s | peak alloc GB | "
             "peak reserved GB | weights after load GB | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for e in entries:
        by[(e["model"], e["backend"], e["kind"])] = e
        if not e["kind"].startswith("gspo"):
            continue
        status = e.get("status")
        if status != "ok":
            status = f"{status}: {str(e.get('error'))[:80]}"
        kind = e["kind"] + (f" (completion {e['batch']['max_completion_length']})" if e.get("batch") else "")
        cells = [e["model"], e["backend"], kind, status, cell(e.get("step_s")), cell(e.get("warmup_s"), 1),
                 cell(e.get("gen_tokens_per_s"), 1), cell(e.get("peak_mem_gb")), cell(e.get("peak_reserved_gb")),
                 cell(e.get("mem_after_load", {}).get("allocated_gb")), str(e.get("device", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    for e in entries:
        if e["kind"] == "decode-profile" and e.get("status") == "ok":
            b1 = e.get("batch_1", {})
            bn = next((v for k, v in e.items() if k.startswith("batch_") and k != "batch_1"), {})
            lines.append(f"- {e['model']} greedy decode: batch 1 prefill {b1.get('prefill_s')}s, "
                         f"{b1.get('decode_ms_per_step')} ms/step; batched prefill {bn.get('prefill_s')}s, "
                         f"{bn.get('decode_ms_per_step')} ms/step")
    ev = [e for e in entries if e["kind"] == "eval"]
    if ev:
        lines += ["", "| model | eval prompts | batch | max_new_tokens | sequential samples/s | batched samples/s | "
                  "speed-up |", "|---|---|---|---|---|---|---|"]
        for e in ev:
            lines.append(f"| {e['model']} | {e.get('n_prompts')} | {e.get('batch_size')} | {e.get('max_new_tokens')} | "
                         f"{cell(e.get('sequential_samples_per_s'))} | {cell(e.get('batched_samples_per_s'))} | "
                         f"{cell(e.get('speedup'))}x |")
    lines.append("")
    for m in ("qwen3-vl-8b-arch", "qwen3-vl-2b-arch", "qwen3-vl-tiny-arch"):
        bf = by.get((m, "transformers-bf16", "gspo"), {})
        q4 = by.get((m, "unsloth-4bit", "gspo"), {})
        if bf.get("peak_mem_gb") and q4.get("peak_mem_gb"):
            r = q4["peak_mem_gb"] / bf["peak_mem_gb"]
            lines.append(f"- {m}: Unsloth-4bit peak / bf16 peak = {q4['peak_mem_gb']:.2f} / {bf['peak_mem_gb']:.2f} "
                         f"= {r:.3f} (target <= 0.3: {'met' if r <= 0.3 else 'MISSED'})")
        if q4.get("peak_reserved_gb"):
            fits = q4["peak_reserved_gb"] * GB <= 24 * 2**30
            lines.append(f"- {m}: Unsloth-4bit step peak reserved {q4['peak_reserved_gb']:.2f} GB, allocated "
                         f"{q4['peak_mem_gb']:.2f} GB; fits a 24 GB (24 GiB) card: {'yes' if fits else 'NO'}")
    for e in ev:
        lines.append(f"- {e['model']}: batched/sequential eval speed-up {e.get('speedup')}x "
                     f"(target >= 5x: {'met' if (e.get('speedup') or 0) >= 5 else 'MISSED'})")
    return "\n".join(lines)
