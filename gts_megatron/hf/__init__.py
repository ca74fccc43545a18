"""Hugging Face interop: import Llama, Mistral and Qwen2 checkpoint folders as megatron
dist-checkpoints, and export dense models back to their family's format."""
