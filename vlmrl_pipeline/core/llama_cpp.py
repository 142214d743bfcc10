"""llama.cpp's own conversion tools and tokenizer files, taken from a package registry.

PyPI's ``llama-cpp-python`` source distribution vendors a complete llama.cpp tree: ``convert_hf_to_gguf.py`` (with
its ``conversion/`` package and the matching ``gguf-py``) and llama.cpp's tokenizer test vocabularies
(``models/ggml-vocab-*.gguf`` with their expected tokenisations). This module fetches that archive once with pip (a
pinned version, checked against its sha256), extracts just those parts into a cache folder, and hands out paths.
Unsloth's ``save_pretrained_gguf`` would instead clone and compile llama.cpp from GitHub, which these machines
cannot reach.

It also builds the demo model's tokenizer from llama.cpp's GPT-2 vocabulary. llama.cpp's converter identifies a
BPE tokenizer by hashing how it splits a fixed probe text and refuses hashes it does not know, so a tokenizer
trained here could never be exported; GPT-2's byte-level BPE is one it knows (``tokenizer.ggml.pre = "gpt-2"``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vlmrl_pipeline.core.files import sha256_file

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The ``llama-cpp-python`` release whose vendored llama.cpp converts Qwen3-VL (text model and ``mmproj``)."""
LLAMA_CPP_PYTHON_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
TOOLS_DIR_ENV_VAR = "VLMRL_TOOLS_DIR"
"""Where fetched tools are cached (default ``~/.cache/vlmrl-pipeline``)."""
SDIST_ENV_VAR = "VLMRL_LLAMA_CPP_SDIST"
"""Path of an already downloaded ``llama_cpp_python-<version>.tar.gz``, for machines without registry access."""

DEMO_VOCAB = "gpt-2"
"""The llama.cpp test vocabulary the demo tokenizer is built from."""
_EXTRACT_PREFIXES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE",
                     f"models/ggml-vocab-{DEMO_VOCAB}.gguf")
VOCAB_TEST_SEPARATOR = "\n__ggml_vocab_test__\n"


@dataclass(frozen=True)
class LlamaCppTools:
    """An extracted llama.cpp tree: the HF-to-GGUF converter and the demo tokenizer's vocabulary."""

    root: Path

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def vocab(self, name: str = DEMO_VOCAB) -> Path:
        """llama.cpp's vocabulary-only GGUF of a known tokenizer (``.inp``/``.out`` beside it hold test cases)."""
        return self.root / "models" / f"ggml-vocab-{name}.gguf"


def tools_cache_dir() -> Path:
    return Path(os.environ.get(TOOLS_DIR_ENV_VAR) or Path.home() / ".cache" / "vlmrl-pipeline")


def _download_sdist(dest: Path) -> Path:
    """``pip download`` the pinned source archive (no build, no dependencies) into ``dest``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "-d", str(dest), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True)
    path = dest / SDIST_NAME
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(
            f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}'s source archive with pip "
            f"(exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
            f"Download {SDIST_NAME} where a package registry is reachable and set {SDIST_ENV_VAR} to its path."
        )
    return path


def _locate_sdist(cache: Path, fetch: bool) -> Path:
    explicit = os.environ.get(SDIST_ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{SDIST_ENV_VAR}={explicit} is not a file")
        return path
    cached = cache / SDIST_NAME
    if cached.is_file():
        return cached
    if not fetch:
        raise FileNotFoundError(f"{SDIST_NAME} is not in {cache}; run `vlmrl-fetch-tools` or set {SDIST_ENV_VAR}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        downloaded = _download_sdist(Path(tmp))
        os.replace(downloaded, cached)
    return cached


def llama_cpp_tools(cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> LlamaCppTools:
    """The extracted llama.cpp tools, fetching and extracting them on first use.

    The archive is verified against :data:`LLAMA_CPP_PYTHON_SDIST_SHA256` before anything in it is used, and the
    tree is extracted to a temporary folder and renamed into place, so an interrupted extraction is never used.
    """
    cache = Path(cache_dir) if cache_dir is not None else tools_cache_dir()
    root = cache / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    tools = LlamaCppTools(root)
    if tools.converter.is_file() and tools.vocab().is_file():
        return tools
    sdist = _locate_sdist(cache, fetch)
    digest = sha256_file(sdist)
    if digest != LLAMA_CPP_PYTHON_SDIST_SHA256:
        raise RuntimeError(f"{sdist} has sha256 {digest}, expected {LLAMA_CPP_PYTHON_SDIST_SHA256}: "
                           "not the pinned llama-cpp-python release (or a damaged download); delete it and retry")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".llama.cpp-"))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = [m for m in archive.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_EXTRACT_PREFIXES)
                       and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(tmp, members=members, filter="data")
        if root.exists():  # a stale or partial tree from an older run
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not tools.converter.is_file():
        raise RuntimeError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return tools


def vocab_tokenizer(vocab_path: str | os.PathLike, special_tokens: tuple[str, ...] = ()):
    """A ``tokenizers.Tokenizer`` equal to the byte-level BPE stored in a llama.cpp vocabulary GGUF.

    Tokens keep their ids and merges their ranks; GPT-2's pre-tokenizer is ``ByteLevel`` with its own split regex.
    ``special_tokens`` missing from the vocabulary are appended after it as special (never split) tokens; ones it
    already has (GPT-2's ``<|endoftext|>``) are marked special in place.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(str(vocab_path))
    model = reader.fields["tokenizer.ggml.model"].contents()
    pre = reader.fields["tokenizer.ggml.pre"].contents()
    if model != "gpt2" or pre != "gpt-2":
        raise ValueError(f"{vocab_path} holds a {model!r}/{pre!r} tokenizer; only GPT-2's byte-level BPE is built")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def vocab_test_cases(vocab_path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test cases shipped beside a vocabulary: (text, expected token ids)."""
    base = Path(vocab_path)
    texts = Path(f"{base}.inp").read_text(encoding="utf-8").split(VOCAB_TEST_SEPARATOR)
    expected = Path(f"{base}.out").read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] in ("", "\n"):  # the file ends with a separator
        texts = texts[:-1]
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(texts, expected, strict=False)]


_PRE_TOKENIZER_SOURCES = ("conversion/base.py", "convert_hf_to_gguf.py")
"""Where llama.cpp's converter keeps ``get_vocab_base_pre`` (newer trees moved it into ``conversion/``)."""
REGISTERED_MARKER = "# vlmrl-pipeline: registered"


def _pre_tokenizer_source(tools: LlamaCppTools) -> Path:
    for name in _PRE_TOKENIZER_SOURCES:
        path = tools.root / name
        if path.is_file() and "def get_vocab_base_pre" in path.read_text(encoding="utf-8"):
            return path
    raise RuntimeError(f"no get_vocab_base_pre in {tools.root}: not a llama.cpp converter this project knows")


def converter_probe_text(tools: LlamaCppTools) -> str:
    """The probe text (``chktxt``) llama.cpp's converter tokenizes to recognise a BPE tokenizer, read from its
    source (a string literal inside ``get_vocab_base_pre``)."""
    import ast

    tree = ast.parse(_pre_tokenizer_source(tools).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "get_vocab_base_pre":
            for item in ast.walk(node):
                if isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "chktxt" for t in item.targets):
                    return ast.literal_eval(item.value)
    raise RuntimeError("llama.cpp's get_vocab_base_pre has no chktxt literal")


def tokenizer_probe_hash(checkpoint: str | os.PathLike, tools: LlamaCppTools) -> str:
    """The hash llama.cpp's converter computes for a checkpoint's tokenizer: sha256 of ``str(ids)`` of the probe
    text, tokenized as the converter does (``AutoTokenizer`` on the folder, ``encode`` with its defaults)."""
    import hashlib

    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(checkpoint)).encode(converter_probe_text(tools))
    return hashlib.sha256(str(ids).encode()).hexdigest()


def uses_gpt2_pre_tokenizer(checkpoint: str | os.PathLike) -> bool:
    """True when the checkpoint's ``tokenizer.json`` is a byte-level BPE whose only pre-tokenizer is GPT-2's
    (``ByteLevel`` with its own split regex, no prefix space): llama.cpp's ``gpt-2`` pre-tokenizer then splits
    text exactly as it does, so the tokenizer can be registered as ``gpt-2``."""
    import json

    path = Path(checkpoint) / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("model", {}).get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"))


def register_pre_tokenizer(tools: LlamaCppTools, chkhsh: str, pre: str = "gpt-2") -> bool:
    """Teach the converter a tokenizer hash, as llama.cpp's ``convert_hf_to_gguf_update.py`` does for new models:
    one ``if chkhsh == ...: res = ...`` branch in ``get_vocab_base_pre``. Returns False when the hash was already
    known (nothing written). The edit goes to a temporary copy that replaces the file, so a reader never sees half
    of it."""
    if not re.fullmatch(r"[0-9a-f]{64}", chkhsh) or not re.fullmatch(r"[\w.-]+", pre):
        raise ValueError(f"not a sha256 hex digest and pre-tokenizer name: {chkhsh!r}, {pre!r}")
    source = _pre_tokenizer_source(tools)
    text = source.read_text(encoding="utf-8")
    if f'"{chkhsh}"' in text:
        return False
    match = re.search(r"^(?P<indent>[ \t]+)res = None[ \t]*$", text[text.index("def get_vocab_base_pre"):], re.M)
    if match is None:
        raise RuntimeError(f"{source}: no 'res = None' line in get_vocab_base_pre to register a tokenizer after")
    at = text.index("def get_vocab_base_pre") + match.end()
    indent = match.group("indent")
    branch = (f"\n{indent}if chkhsh == \"{chkhsh}\":\n{indent}    {REGISTERED_MARKER} (a small byte-level BPE with "
              f"GPT-2's pre-tokenizer)\n{indent}    res = \"{pre}\"")
    fd, tmp = tempfile.mkstemp(dir=source.parent, prefix=f".{source.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text[:at] + branch + text[at:])
    os.replace(tmp, source)
    return True


def register_checkpoint_tokenizer(checkpoint: str | os.PathLike, tools: LlamaCppTools) -> str | None:
    """Register a checkpoint's tokenizer with the converter when it splits text like GPT-2 (see
    :func:`uses_gpt2_pre_tokenizer`) and the converter does not know its hash yet. Returns the hash registered,
    or None when nothing was needed or possible (the converter then decides as it always does)."""
    if not uses_gpt2_pre_tokenizer(checkpoint):
        return None
    chkhsh = tokenizer_probe_hash(checkpoint, tools)
    return chkhsh if register_pre_tokenizer(tools, chkhsh, "gpt-2") else None


def main() -> None:
    """``vlmrl-fetch-tools``: fetch and extract llama.cpp's tools now, so later runs need no registry."""
    tools = llama_cpp_tools()
    print(f"llama.cpp tools from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}: {tools.root}")


if __name__ == "__main__":
    main()
