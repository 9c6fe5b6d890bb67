"""Checkpoint families: for each, how its files name and lay out config.py's parameters and which
config fields give the sizes (after Tunix's models/<family>/params.py). A family module has:

    NAME                          config.json model_type and GGUF general.architecture
    BLOCK_NAMES, TOP_NAMES        pytree key -> (HF name, GGUF name, stored transposed)
    BIASES                        the block keys present only when cfg.attn_bias
    config_from_hf(hf) / config_to_hf(cfg, dtype)         config.json <-> LMConfig
    config_from_gguf(value, shapes)                       GGUF metadata + tensor table -> LMConfig
    gguf_names(cfg)               HF name -> (GGUF name, heads its rows are permuted by, or None)

The model (model.py) is the same for all of them: what differs is in LMConfig's fields.
"""
from __future__ import annotations

from types import ModuleType

from sim.lm.config import CheckpointError
from sim.lm.families import llama, qwen2

FAMILIES: dict[str, ModuleType] = {f.NAME: f for f in (llama, qwen2)}


def family(name, where: str) -> ModuleType:
    """The family called `name`; `where` says which field named it (for the one-line error)."""
    if name not in FAMILIES:
        raise CheckpointError(f"{where}={name!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]
