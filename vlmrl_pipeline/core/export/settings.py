"""What the export stage writes (:class:`ExportSettings`), and the dtypes and GGUF types it can write."""

from __future__ import annotations

from dataclasses import dataclass, field

MERGED_DTYPES = ("bfloat16", "float16", "float32")
GGUF_CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Types llama.cpp's converter writes itself (pure Python: no llama.cpp runtime needed)."""
GGUF_QUANTIZER_TYPES = {"q4_k_m": 15}
"""Types only llama.cpp's quantizer writes, from an f16 file: name -> ``llama_ftype`` (``LLAMA_FTYPE_MOSTLY_Q4_K_M``).
They need the llama.cpp runtime (``llama-cpp-python``, the ``gguf`` extra)."""
GGUF_TYPES = GGUF_CONVERTER_TYPES + tuple(GGUF_QUANTIZER_TYPES)
MMPROJ_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class ExportSettings:
    """What the export stage writes from the trained adapter."""

    merged_dtype: str = field(default="bfloat16", metadata={"help": (
        "dtype of the merged 16-bit checkpoint (``bfloat16`` as the seeds' ``merged_16bit``; ``float32`` is "
        "exact).")})
    merged_4bit: bool = field(default=False, metadata={"help": (
        "Also write Unsloth's merged 4-bit (bitsandbytes) checkpoint, ``save_method=\"merged_4bit_forced\"``. Needs "
        "Unsloth and CUDA; refused with a clear error elsewhere.")})
    gguf_types: tuple[str, ...] = field(default=("f16", "q8_0"), metadata={"help": (
        "GGUF files to write, one per type: ``f16``/``bf16``/``f32``/``q8_0`` by llama.cpp's converter, "
        "``q4_k_m`` by its quantizer (needs the ``gguf`` extra's llama.cpp runtime).")})
    mmproj_type: str = field(default="f16", metadata={"help": (
        "Type of the vision encoder + projector file (``mmproj``), shared by all GGUF types.")})
    verify_with_llama_cpp: bool = field(default=True, metadata={"help": (
        "When the llama.cpp runtime is installed, run each GGUF on a held-out prompt and record whether its "
        "greedy tokens equal ``transformers``' on the merged checkpoint.")})
    shipped_accuracy_tolerance: float = field(default=0.02, metadata={"help": (
        "The blocking checks ``merged_accuracy_kept`` / ``gguf_accuracy_kept`` fail an artifact whose held-out "
        "accuracy (strict or MathVista's) is below the adapter's with the paired 95% interval below 0 and a drop "
        "of more than this (a rate: 0.02 = 2 points).")})
    shipped_logit_samples: int = field(default=8, metadata={"help": (
        "Held-out samples on which ``gguf_records`` also compares each GGUF (through llama.cpp's multimodal "
        "runtime, with the image) with the merged checkpoint token by token: first-token logits and greedy "
        "tokens. What a random-weight rehearsal can compare, since its answers mean nothing. 0: skip.")})
    llama_cpp_extra_buffer_types: bool = field(default=False, metadata={"help": (
        "Let llama.cpp's CPU backend repack weights into its extra buffer types (AMX tiles, the AVX2/NEON "
        "repacked q4_0/q8_0 layouts) when ``gguf_records`` runs a GGUF. Off: on Sapphire Rapids the AMX kernels "
        "segfault on small q8_0 matrices; the plain kernels compute the same products.")})

    def __post_init__(self) -> None:
        if self.merged_dtype not in MERGED_DTYPES:
            raise ValueError(f"merged_dtype must be one of {list(MERGED_DTYPES)}, got {self.merged_dtype!r}")
        unknown = [t for t in self.gguf_types if t not in GGUF_TYPES]
        if unknown:
            raise ValueError(f"unknown GGUF types {unknown}; choose from {list(GGUF_TYPES)}")
        if self.mmproj_type not in MMPROJ_TYPES:
            raise ValueError(f"mmproj_type must be one of {list(MMPROJ_TYPES)}, got {self.mmproj_type!r}")
        if not 0.0 <= self.shipped_accuracy_tolerance < 1.0:
            raise ValueError(f"shipped_accuracy_tolerance is a rate in [0, 1), got {self.shipped_accuracy_tolerance}")
        if self.shipped_logit_samples < 0:
            raise ValueError(f"shipped_logit_samples must be >= 0, got {self.shipped_logit_samples}")
