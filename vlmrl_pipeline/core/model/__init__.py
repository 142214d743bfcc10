"""The model: loading a policy with its LoRA adapter, and the model card of what is shipped."""
