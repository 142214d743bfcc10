"""Print the README's rehearsal table from the ``rehearsal-<profile>.json`` files that ``vlmrl-rehearse`` writes.

    python benchmarks/rehearsal_table.py benchmarks/logs/rehearsal/rehearsal-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGE_NAMES = {"data": "data + base_model", "baseline": "baseline eval", "train": "GSPO (lora_adapter)",
               "after": "after eval + report", "merge": "merged_model (16-bit + Unsloth 4-bit)", "gguf": "gguf_model"}


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
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def main(argv: list[str]) -> int:
    for name in argv or sorted(str(p) for p in Path("benchmarks/logs/rehearsal").glob("rehearsal-*.json")):
        print(table(Path(name)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
