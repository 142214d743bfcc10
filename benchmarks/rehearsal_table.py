"""Print the README's rehearsal table from the ``rehearsal-<profile>.json`` files that ``vlmrl-rehearse`` writes.

    python benchmarks/rehearsal_table.py benchmarks/logs/rehearsal/rehearsal-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGE_NAMES = {"data": "data + base_model", "baseline": "baseline eval", "train": "GSPO (lora_adapter)",
               "after": "after eval", "merge": "merged_model (16-bit + Unsloth 4-bit)", "gguf": "gguf_model",
               "shipped": "merged_records + gguf_records (mtmd, with the image) + report"}


def _gb(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "n/a"


def table(path: Path) -> str:
    results = json.loads(path.read_text())
    lines = [f"**{results['profile']}** (stand-in `{Path(results['model_dir']).name}`)", "",
             "| stage | wall s | peak GPU GB (device) | peak host GB (RSS) | checks |", "|---|---|---|---|---|"]
    total = 0.0
    for stage, entry in results["stages"].items():
        total += entry["wall_s"]
        checks = ", ".join(f"{name} {'ok' if passed else 'FAILED'}" for name, passed in entry["checks"].items())
        lines.append(f"| {STAGE_NAMES.get(stage, stage)} | {entry['wall_s']:.0f} | {_gb(entry.get('gpu_peak_used_gb'))}"
                     f" | {_gb(entry.get('host_peak_gb'))} | {checks or '-'} |")
    lines.append(f"| **whole lineage** | **{total:.0f}** | | | |")
    merge = results["stages"].get("merge", {}).get("assets", {}).get("merged_model", {})
    gguf = results["stages"].get("gguf", {}).get("assets", {}).get("gguf_model", {})
    notes = []
    if merge:
        notes.append(f"merge itself {merge.get('merge_seconds')} s; merged vs base + adapter: first-token argmax "
                     f"{merge.get('merge_argmax_agree')}, RMS logit difference "
                     f"{merge.get('merge_relative_logit_diff', float('nan')):.3f} of the spread; 16-bit "
                     f"{merge.get('size_bytes', 0) / 1e9:.1f} GB, 4-bit {merge.get('size_bytes_4bit', 0) / 1e9:.1f} GB")
    if gguf:
        files = [f"{key[:-len('_size_bytes')]} {value / 1e9:.1f} GB" for key, value in gguf.items()
                 if key.endswith("_size_bytes") and isinstance(value, (int, float))]
        notes.append(f"GGUF ({gguf.get('architecture')}, pre-tokenizer {gguf.get('tokenizer_pre')}): "
                     + ", ".join(files))
    shipped = results["stages"].get("shipped", {}).get("assets", {}).get("gguf_records", {})
    for gguf_type in [t.strip() for t in str(shipped.get("gguf_types", "")).split(",") if t.strip()]:
        # Random weights: the answers mean nothing, the token-by-token agreement with the merged checkpoint does.
        notes.append(f"GGUF {gguf_type} through mtmd with the image vs the merged checkpoint: first-token argmax "
                     f"{shipped.get(f'{gguf_type}_first_token_argmax_agree', float('nan')):.0%} of samples, greedy "
                     f"tokens identical {shipped.get(f'{gguf_type}_greedy_identical', float('nan')):.0%}, mean RMS "
                     f"logit difference {shipped.get(f'{gguf_type}_mean_relative_logit_diff', float('nan')):.3f} of "
                     f"the spread; prompts token-identical {shipped.get(f'{gguf_type}_prompt_tokens_identical')}/"
                     f"{shipped.get('num_samples')}, images in as many tokens "
                     f"{shipped.get(f'{gguf_type}_image_tokens_identical')}/{shipped.get('num_samples')}")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def main(argv: list[str]) -> int:
    for name in argv or sorted(str(p) for p in Path("benchmarks/logs/rehearsal").glob("rehearsal-*.json")):
        print(table(Path(name)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
