"""The export stages' core, without Dagster: what they write (``settings``), the trained adapter merged into its
base (``merge``), whether the export will fit, checked before training (``preflight``), and GGUF files made, read
back and run through llama.cpp (``gguf``; its converter and vocabularies come from ``core.llama_cpp``)."""
