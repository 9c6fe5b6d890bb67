"""Checkpoint file formats, read and written without knowing any model family: a Hugging Face
directory (config.json + safetensors) and a GGUF file (llama.cpp). Names, layouts and config fields
are the families' business (sim/lm/families); weights.py composes the two."""
