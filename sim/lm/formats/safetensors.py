"""A Hugging Face model directory: config.json and model.safetensors, or shards listed in
model.safetensors.index.json. Tensors are read one at a time with numpy, in the file's own names
and layout; nothing here knows which names a model has."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sim.lm.config import CheckpointError


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_config(directory: Path) -> dict:
    """config.json as a mapping (CheckpointError if it is not a JSON object)."""
    try:
        hf = json.loads((directory / "config.json").read_text("utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{directory / 'config.json'} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{directory / 'config.json'} is not a JSON object")
    return hf


def weight_files(directory: Path) -> dict[str, list[str] | None]:
    """safetensors file -> the tensor names the index assigns it (None: every tensor in it)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index ({_one_line(e)})") from None
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


def tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers only (no tensor is read)."""
    from safetensors import safe_open

    shapes = {}
    for file, names in weight_files(directory).items():
        try:
            with safe_open(directory / file, framework="numpy") as f:
                shapes |= {n: tuple(f.get_slice(n).get_shape()) for n in names or f.keys()}
        except Exception as e:  # safetensors' own errors: a damaged or truncated header
            raise CheckpointError(f"{directory / file}: not a readable safetensors file ({_one_line(e)})") from None
    return shapes


@contextlib.contextmanager
def open_tensors(directory: Path) -> Iterator[tuple[Callable[[str], np.ndarray], set[str]]]:
    """(get(name) -> array, the names there are): every shard open for the block's duration."""
    from safetensors import safe_open

    files = weight_files(directory)
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(directory / file, framework="numpy"))
                   for file in sorted(files)}
        weight_map = {name: file for file, names in files.items()
                      for name in (names if names is not None else handles[file].keys())}
        yield (lambda name: handles[weight_map[name]].get_tensor(name)), set(weight_map)


def write(directory, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """config.json + model.safetensors (the metadata transformers expects of a PyTorch export)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
