"""Does a q8_0 GGUF run through llama-cpp-python's high-level ``Llama`` on this CPU, and what makes it run?

On CPUs with AMX, llama.cpp puts q8_0 (and q4) weights into its AMX extra buffer type when the model loads with
extra buffer types on, and the crash reported in #26/#28 (rc 139) came from there. ``Llama()`` starts from
``llama_model_default_params()`` (extra buffer types on) and drops an unknown ``use_extra_bufts`` keyword, so the
README's fix swaps the defaults while the constructor runs (``plain_cpu_buffers``). Each way runs in its own child
process, since a segfault ends the process:

    python benchmarks/llama_cpp_amx_check.py data/gguf_model/model-q8_0.gguf [--out amx_check.json]

Prints one JSON object: the CPU's AMX flags and, per way, the exit code, whether it decoded, and the buffer
types llama.cpp's load log names.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys
import llama_cpp.llama_cpp as llama_lib
from llama_cpp import Llama

way, path = sys.argv[1], sys.argv[2]
if way == "plain_cpu_buffers":
    default = llama_lib.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    llama_lib.llama_model_default_params = without_extra_buffers
kwargs = {"use_extra_bufts": False} if way == "keyword_use_extra_bufts_false" else {}
llm = Llama(model_path=path, n_ctx=512, verbose=True, **kwargs)
print("USE_EXTRA_BUFTS", bool(llm.model_params.use_extra_bufts), flush=True)
out = llm("The answer is", max_tokens=8, temperature=0.0)
print("DECODED", repr(out["choices"][0]["text"]), flush=True)
"""

WAYS = ("default", "keyword_use_extra_bufts_false", "plain_cpu_buffers")


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith("amx") or f in ("avx512f", "avx512_vnni", "avx512_bf16"))


def run_way(way: str, gguf: Path, timeout_s: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, way, str(gguf)], capture_output=True, text=True,
                          timeout=timeout_s)
    log = done.stdout + done.stderr
    buffers = sorted(set(re.findall(r"(\w+) model buffer size", log)))
    extra = re.search(r"USE_EXTRA_BUFTS (True|False)", log)
    return {"way": way, "returncode": done.returncode, "decoded": "DECODED" in log,
            "use_extra_bufts": extra.group(1) == "True" if extra else None,
            "model_buffers": buffers, "log_tail": log[-600:] if done.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path, help="a q8_0 GGUF (the lineage's gguf_model/model-q8_0.gguf)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout-s", type=int, default=300)
    args = parser.parse_args(argv)
    import llama_cpp

    result = {"gguf": str(args.gguf), "llama_cpp_python": llama_cpp.__version__, "cpu_flags": cpu_flags(),
              "ways": [run_way(way, args.gguf, args.timeout_s) for way in WAYS]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
