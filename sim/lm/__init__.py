"""Real decoder-only language models in plain JAX: checkpoint formats (Hugging Face safetensors
directories, GGUF), tokenizers, the model, sampling with a key/value cache, and sharding rules.

`policies/pretrained.py` adapts a model to the `Policy` interface; nothing here knows about RL.
"""
