"""A GGUF file (llama.cpp): metadata values and tensors, every tensor dequantised to float32 by the
gguf package. The file is memory-mapped and parsed once per process (checkpoint and tokenizer share
the parse); tensors are read as they are asked for. Names and layouts are the families' business."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from sim.lm.config import CheckpointError


def reader(path):
    """The file's `gguf.GGUFReader`, parsed once per process (CheckpointError if it is damaged)."""
    path = Path(path).resolve()
    stat = path.stat()
    try:
        return _parsed(path, stat.st_mtime_ns, stat.st_size)
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

    parsed = Reader(path)
    parsed.source, parsed.by_name = path, {t.name: t for t in parsed.tensors}
    return parsed


def value(reader, key: str, default=None):
    """A metadata value (str, number, bool or list), or `default` when the key is absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def f32_decimal(x: float) -> float:
    """GGUF stores floats as float32: the shortest decimal that rounds to the same float32
    (1e-05, not 9.999999747378752e-06), i.e. the value its config.json had."""
    return float(str(np.float32(x)))


def tensor_shapes(reader) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, outermost dimension first (GGUF lists them innermost first)."""
    return {t.name: tuple(int(s) for s in reversed(t.shape)) for t in reader.tensors}


def read_tensor(reader, name: str) -> np.ndarray:
    """One tensor, dequantised to float32, in `tensor_shapes`' shape."""
    import gguf

    t = reader.by_name[name]
    try:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{reader.source.name}: tensor {name} has type {t.tensor_type.name}, which the "
                              "installed gguf package cannot dequantize") from None
    return w.reshape(tuple(int(s) for s in reversed(t.shape)))
