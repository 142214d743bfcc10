"""The adapter and merged-checkpoint folders as a Hugging Face user takes them away: loadable from their own folder
(processor and chat template inside, a base reference that works on another machine, a task type PEFT's auto
classes accept for a vision-language model) and a model card (``README.md``) recording the lineage, the prompt and
working snippets for PEFT, transformers and llama.cpp.

The base reference: a hub id stays the hub id (with its revision in PEFT's ``revision`` field). A base built in the
data folder (the demo's) is named by its path relative to the data folder (``base_model/checkpoint``), which is how
``from_pretrained`` resolves a relative path: against the working directory. So from inside the data folder, moved
or copied anywhere, ``AutoPeftModel.from_pretrained("lora_adapter")`` finds its base.
"""

from __future__ import annotations

import json
import os
import pprint
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
EVALUATION_START = "<!-- vlmrl:evaluation:start -->"
EVALUATION_END = "<!-- vlmrl:evaluation:end -->"
NOT_EVALUATED = (
    "Not evaluated yet: `eval_diff_report` writes its held-out headline here when it runs on this artifact's adapter."
)


def portable_base_reference(ref: Mapping[str, Any], base_folder: str = "base_model") -> str:
    """What ``adapter_config.json`` names as the base: the hub id, or a built checkpoint's path relative to the
    data folder.

    >>> portable_base_reference({"model_name": "org/name", "checkpoint_dir": None})
    'org/name'
    >>> portable_base_reference({"model_name": "demo:tiny-qwen3-vl", "checkpoint_dir": "checkpoint"})
    'base_model/checkpoint'
    """
    if ref.get("checkpoint_dir"):
        return f"{base_folder}/{ref['checkpoint_dir']}"
    return str(ref["model_name"])


def model_class_name(base_config: Mapping[str, Any]) -> str:
    """The transformers class a checkpoint's ``config.json`` names (``Qwen3VLForConditionalGeneration``)."""
    architectures = base_config.get("architectures") or []
    if not architectures:
        raise ValueError("the base model's config.json names no architecture: cannot tell PEFT which class loads it")
    return str(architectures[0])


def make_adapter_portable(
    adapter_dir: str | os.PathLike, *, base_reference: str, revision: str | None, base_class: str
) -> dict[str, Any]:
    """Rewrite ``adapter_config.json`` so the folder loads by itself: ``base_model_name_or_path`` the portable
    reference (not the training machine's absolute path), ``revision`` the base's, and no ``task_type`` but an
    ``auto_mapping`` to the base's own class.

    PEFT's ``AutoPeftModel`` refuses any ``task_type`` ("Cannot use AutoPeftModel with a task type") and
    ``AutoPeftModelForCausalLM`` loads through ``AutoModelForCausalLM``, which has no vision-language classes; with
    ``task_type`` None PEFT reads ``auto_mapping`` (what its own ``save_pretrained`` writes for a model without a
    task type) and loads the class named there. The LoRA weights and their placement are untouched. Returns the
    new config.
    """
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config.update(
        base_model_name_or_path=base_reference,
        revision=revision,
        task_type=None,
        auto_mapping={"base_model_class": base_class, "parent_library": "transformers"},
    )
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def adapter_copy_for(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_load_path: str) -> Path:
    """A copy of the adapter whose config names ``base_load_path`` (absolute) and PEFT's causal-LM task type, as
    training wrote it: for loaders that take the base from the adapter's config and run in another working
    directory (Unsloth's ``FastVisionModel.from_pretrained(adapter_dir)``)."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(adapter_dir).iterdir():
        if item.is_file() and item.name != CARD_NAME:
            shutil.copy2(item, out / item.name)
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    config.update(base_model_name_or_path=base_load_path, task_type="CAUSAL_LM", auto_mapping=None)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def save_base_processor(base_load_path: str, folder: str | os.PathLike, revision: str | None = None) -> list[str]:
    """The base's processor (tokenizer, image processor, chat template) and tokenizer side files, saved into
    ``folder`` as the base ships them, so ``AutoProcessor.from_pretrained(folder)`` works. Returns the files
    written."""
    import shutil

    from transformers import AutoProcessor

    from vlmrl_pipeline.core.model.loading import tokenizer_sidecars

    folder = Path(folder)
    before = {p.name for p in folder.iterdir()}
    AutoProcessor.from_pretrained(base_load_path, revision=revision).save_pretrained(folder)
    for name, source in tokenizer_sidecars(base_load_path, revision).items():
        if not (folder / name).exists():
            shutil.copyfile(source, folder / name)
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


@dataclass(frozen=True)
class CardSample:
    """One held-out sample the snippets run on: its image (relative to the data folder) and the chat prompt the
    policy was trained and evaluated with."""

    image: str
    messages: list[dict]


@dataclass(frozen=True)
class CardFacts:
    """What a card records about an artifact's lineage."""

    base_model: str
    base_revision: str | None
    base_reference: str
    dataset_sha256: str
    manifest_sha256: str
    adapter_sha256: str
    reward_version: str
    answer_format: str
    instruction: str | None
    system_prompt: str | None
    training: dict[str, Any] = field(default_factory=dict)
    """``global_step``, ``train_rows``, ``backend``, ``final_logged_reward``: what training reported."""


def _is_hub_id(name: str) -> bool:
    """Shaped like a hub id (``org/name``): not an absolute or dotted local path, nor the demo's ``demo:`` name.

    >>> [_is_hub_id(n) for n in ("unsloth/Qwen3-VL-8B", "/abs/model", "./model", "demo:tiny")]
    [True, False, False, False]
    """
    from vlmrl_pipeline.core.data.sources import is_local_path

    return name.count("/") == 1 and ":" not in name and not is_local_path(name)


def _front_matter(facts: CardFacts, library: str) -> str:
    lines = [
        "---",
        f"library_name: {library}",
        "pipeline_tag: image-text-to-text",
        "tags: [vlmrl-pipeline, gspo, grpo, trl, lora, vision-language]",
    ]
    if facts.base_reference == facts.base_model and _is_hub_id(facts.base_model):
        lines.append(f"base_model: {facts.base_model}")  # the hub validates this key: only for a hub id
    return "\n".join([*lines, "---", ""])


def _lineage_table(facts: CardFacts) -> str:
    revision = facts.base_revision or "unpinned"
    rows = [
        ("base model", f"`{facts.base_model}` (revision {revision}); loaded from `{facts.base_reference}`"),
        ("data set sha256 (`mathvista_filtered/filtered.parquet`)", f"`{facts.dataset_sha256}`"),
        ("images and split sha256 (`resized_images/manifest.parquet`)", f"`{facts.manifest_sha256}`"),
        ("reward version", f"`{facts.reward_version}` (answer format `{facts.answer_format}`)"),
        ("adapter sha256 (`adapter_model.safetensors`)", f"`{facts.adapter_sha256}`"),
    ]
    t = facts.training
    if t:
        rows.append(
            (
                "training",
                f"GSPO, {t.get('global_step')} steps on {t.get('train_rows')} training rows "
                f"({t.get('backend')}); last logged reward {t.get('final_logged_reward')}",
            )
        )
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def _prompt_section(facts: CardFacts) -> str:
    if facts.instruction:
        how = (
            f"one user turn: the image, then the question, a newline and the format instruction\n\n"
            f"> {facts.instruction}\n\nWithout the instruction the answers do not follow the trained format."
        )
    else:
        how = "one user turn: the image, then the question, with nothing appended"
    if facts.system_prompt:
        how += f"\n\nA system turn comes first:\n\n> {facts.system_prompt}"
    return f"## Prompt\n\nTrained and evaluated on {how}\n"


def _messages_code(sample: CardSample) -> str:
    return "messages = " + pprint.pformat(sample.messages, width=110, sort_dicts=False).replace("\n", "\n" + " " * 11)


def _generate_code(sample: CardSample) -> str:
    return (
        f'image = Image.open({sample.image!r}).convert("RGB")\n'
        f"{_messages_code(sample)}\n"
        "text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)\n"
        'inputs = processor(text=[text], images=[image], return_tensors="pt")\n'
        "output = model.generate(**inputs, max_new_tokens=256, do_sample=False)\n"
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )


def peft_snippet(adapter: str, sample: CardSample) -> str:
    return (
        "from peft import AutoPeftModel\nfrom PIL import Image\nfrom transformers import AutoProcessor\n\n"
        f"model = AutoPeftModel.from_pretrained({adapter!r})  # the base named in adapter_config.json, + LoRA\n"
        f"processor = AutoProcessor.from_pretrained({adapter!r})\n" + _generate_code(sample)
    )


def transformers_snippet(folder: str, sample: CardSample, comment: str) -> str:
    return (
        "from PIL import Image\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f"model = AutoModelForImageTextToText.from_pretrained({folder!r})  # {comment}\n"
        f"processor = AutoProcessor.from_pretrained({folder!r})\n" + _generate_code(sample)
    )


def llama_cpp_snippet(gguf: str, mmproj: str, sample: CardSample) -> str:
    """llama-cpp-python's high-level ``Llama`` with the mmproj through ``MTMDChatHandler``, its weights kept out of
    llama.cpp's extra CPU buffer types (see the README's *Use the artifacts*: ``Llama()`` has no switch for them and
    ignores a ``use_extra_bufts`` keyword; on AMX CPUs q8_0 segfaults in them)."""
    content = []
    for message in sample.messages:
        parts = [
            {"type": "image_url", "image_url": {"url": "IMAGE_URL"}} if p.get("type") == "image" else p
            for p in message["content"]
        ]
        content.append({"role": message["role"], "content": parts})
    messages = (
        pprint.pformat(content, width=110, sort_dicts=False)
        .replace("'IMAGE_URL'", "image_url")
        .replace("\n", "\n" + " " * 11)
    )
    return (
        "import base64\nimport contextlib\n\nimport llama_cpp.llama_cpp as llama_lib\nfrom llama_cpp import Llama\n"
        "from llama_cpp.llama_chat_format import MTMDChatHandler\n\n\n"
        "@contextlib.contextmanager\n"
        "def plain_cpu_buffers():\n"
        '    """Llama() loads with llama.cpp\'s default model parameters, extra CPU buffer types on (AMX,\n'
        "    repacked q4/q8 weights), and silently ignores a use_extra_bufts keyword: hand it the defaults with\n"
        '    them off."""\n'
        "    default = llama_lib.llama_model_default_params\n\n"
        "    def without_extra_buffers():\n"
        "        params = default()\n"
        "        params.use_extra_bufts = False\n"
        "        return params\n\n"
        "    llama_lib.llama_model_default_params = without_extra_buffers\n"
        "    try:\n        yield\n    finally:\n        llama_lib.llama_model_default_params = default\n\n\n"
        "with plain_cpu_buffers():\n"
        f"    llm = Llama(model_path={gguf!r}, n_ctx=4096, verbose=False,\n"
        f"                chat_handler=MTMDChatHandler(clip_model_path={mmproj!r}, use_gpu=False, verbose=False))\n"
        "assert not llm.model_params.use_extra_bufts\n"
        f'with open({sample.image!r}, "rb") as f:\n'
        '    image_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()\n'
        f"messages = {messages}\n"
        "answer = llm.create_chat_completion(messages=messages, temperature=0.0, repeat_penalty=1.0, max_tokens=256)\n"
        'print(answer["choices"][0]["message"]["content"])\n'
    )


def _fenced(code: str) -> str:
    return f"```python\n{code}```\n"


def _evaluation_block(evaluation: str | None) -> str:
    return f"{EVALUATION_START}\n{evaluation or NOT_EVALUATED}\n{EVALUATION_END}\n"


def adapter_card(
    facts: CardFacts,
    sample: CardSample,
    adapter: str = "lora_adapter",
    merged: str = "merged_model/checkpoint",
    gguf: str = "gguf_model",
) -> str:
    """The adapter folder's ``README.md``; every path is relative to the data folder, where the snippets run."""
    return "\n".join(
        [
            _front_matter(facts, "peft"),
            f"# GSPO LoRA adapter for {facts.base_model}",
            "",
            "LoRA on the language model's attention and MLP projections (vision tower frozen), trained with GSPO "
            '(TRL\'s `GRPOTrainer`, `importance_sampling_level="sequence"`) by vlmrl-pipeline on the training '
            "split only.",
            "",
            "## Lineage",
            "",
            _lineage_table(facts),
            "## Held-out evaluation",
            "",
            _evaluation_block(None),
            _prompt_section(facts),
            "## Use it",
            "",
            "Run from the data folder (the folder holding `lora_adapter/`; moved or copied anywhere it still works: "
            f"`adapter_config.json` names the base as `{facts.base_reference}`, which `from_pretrained` resolves "
            "against the working directory when it is a path). The processor and chat template are in this folder.",
            "",
            "PEFT (`AutoPeftModel` loads the base class named in `auto_mapping`, then the adapter):",
            "",
            _fenced(peft_snippet(adapter, sample)),
            "transformers (with PEFT installed it reads `adapter_config.json` itself; the merged checkpoint "
            f"`{merged}/` needs no PEFT):",
            "",
            _fenced(transformers_snippet(adapter, sample, "base + adapter through transformers' PEFT integration")),
            f"llama.cpp (the GGUF export in `{gguf}/`, with its vision projector):",
            "",
            _fenced(llama_cpp_snippet(f"{gguf}/model-q8_0.gguf", f"{gguf}/mmproj-f16.gguf", sample)),
        ]
    )


def merged_card(
    facts: CardFacts,
    sample: CardSample,
    merge_check: Mapping[str, Any],
    dtype: str,
    folder: str = "merged_model/checkpoint",
    gguf: str = "gguf_model",
) -> str:
    """The merged checkpoint's ``README.md``."""
    agreement = (
        f"first-token argmax {merge_check.get('argmax_agree')}/{merge_check.get('prompts')}, RMS logit "
        f"difference {float(merge_check.get('relative_logit_diff', float('nan'))):.4f} of the spread "
        f"(tolerance {merge_check.get('tolerance')}) against {merge_check.get('reference')}"
    )
    return "\n".join(
        [
            _front_matter(facts, "transformers"),
            f"# {facts.base_model} with the GSPO LoRA adapter merged ({dtype})",
            "",
            "A standalone checkpoint: the adapter's updates added to the base weights in float32 and rounded once; "
            f"loads with plain transformers, no PEFT. Checked against base + adapter: {agreement}.",
            "",
            "## Lineage",
            "",
            _lineage_table(facts),
            "## Held-out evaluation",
            "",
            _evaluation_block(None),
            _prompt_section(facts),
            "## Use it",
            "",
            "Run from the data folder (the folder holding `merged_model/`).",
            "",
            _fenced(transformers_snippet(folder, sample, "a standalone checkpoint")),
            f"llama.cpp (the GGUF export of this checkpoint, in `{gguf}/`):",
            "",
            _fenced(llama_cpp_snippet(f"{gguf}/model-q8_0.gguf", f"{gguf}/mmproj-f16.gguf", sample)),
        ]
    )


def with_evaluation(card: str, evaluation: str) -> str:
    """``card`` with its held-out evaluation block replaced by ``evaluation``.

    >>> with_evaluation(f"a\\n{EVALUATION_START}\\nold\\n{EVALUATION_END}\\nb", "new")
    'a\\n<!-- vlmrl:evaluation:start -->\\nnew\\n<!-- vlmrl:evaluation:end -->\\nb'
    """
    pattern = re.compile(re.escape(EVALUATION_START) + r".*?" + re.escape(EVALUATION_END), re.S)
    if not pattern.search(card):
        raise ValueError(f"the card has no {EVALUATION_START} ... {EVALUATION_END} block")
    return pattern.sub(lambda _m: f"{EVALUATION_START}\n{evaluation.strip()}\n{EVALUATION_END}", card, count=1)


def card_adapter_sha256(card: str) -> str | None:
    """The adapter sha256 a card records (its lineage table's row)."""
    found = re.search(r"\| adapter sha256 \(`adapter_model\.safetensors`\) \| `([0-9a-f]{64})` \|", card)
    return found.group(1) if found else None


def evaluation_markdown(diff: Mapping[str, Any], shipped_table: str = "") -> str:
    """The report's headline as a card shows it: each accuracy and format compliance before and after, the change
    with its paired bootstrap 95% interval and the McNemar p-value, on how many held-out samples; then the report's
    table of the shipped artifacts, if given."""
    names = {
        "accuracy": "accuracy (strict)",
        "accuracy_mathvista": "accuracy (MathVista's normalisation)",
        "format_compliance": "format compliance",
        "answer_rate": "answer rate",
    }
    headline, comparison = diff["headline"], diff["comparison"]
    lines = [
        f"From `eval_diff_report` on {diff['num_samples']} held-out samples (greedy), the base before RL and "
        "base + this adapter after:",
        "",
        "| metric | before | after | change [95% interval] | McNemar p |",
        "|---|---|---|---|---|",
    ]
    for key, name in names.items():
        c = comparison.get(key)
        before, after = headline.get(f"baseline_{key}"), headline.get(f"after_{key}")
        if c is None or before is None or after is None:
            continue
        lines.append(
            f"| {name} | {100 * before:.1f}% | {100 * after:.1f}% | {100 * c['difference']:+.1f} pts "
            f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | {c['p_value']:.2g} |"
        )
    if shipped_table.strip():  # its headings one level down: the card's section is a level-2 heading
        lines += ["", re.sub(r"^## ", "### ", shipped_table.strip(), flags=re.M)]
    return "\n".join(lines) + "\n"


def sample_for_card(row: Mapping[str, Any], data_dir: str | os.PathLike, style) -> CardSample:
    """The first held-out row as the snippets' example: its image relative to the data folder and its chat prompt
    (``core.prompts``: the question plus the format instruction, or the system turn)."""
    from vlmrl_pipeline.core.prompts import build_prompt_text, chat_prompt

    text = build_prompt_text(row, style.prompt_field, instruction=style.instruction)
    image = Path(os.path.relpath(Path(row["image_path"]).resolve(), Path(data_dir).resolve())).as_posix()
    return CardSample(image=image, messages=chat_prompt(text, system_prompt=style.system_prompt or None))
