"""Safetensors checkpoint files as a lazily read state dict, for CometMoE.from_hf_state_dict: a rank reads
only the tensors (and, of a fused (E, ...) tensor, only the expert rows) it asks for, so loading a block under
torchrun reads each expert once in all. Needs the safetensors package (installed with transformers).

    >>> sd = SafetensorsStateDict("model.safetensors.index.json")        # doctest: +SKIP
    >>> layer = CometMoE.from_hf_state_dict(sd, config=config, layer=3, prefix="model.layers.3.mlp.",
    ...                                     world="process-group", ...)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["SafetensorsStateDict"]


class SafetensorsStateDict(Mapping):
    """Keys of one or several .safetensors files (a path, a list of paths, or a sharded checkpoint's
    model.safetensors.index.json); a tensor is read from disk when it is looked up, on the CPU.
    get_slice(key)[a:b] reads rows a..b-1 of it only."""

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        from safetensors import safe_open  # deferred: only loading checkpoint files needs safetensors

        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        files: list[Path] = []
        for p in paths:
            if p.name.endswith(".index.json"):
                weight_map = json.loads(p.read_text()).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ValueError(f"{p} has no weight_map: not a safetensors index file")
                files += [p.parent / f for f in dict.fromkeys(weight_map.values())]
            else:
                files.append(p)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"no such safetensors file: {', '.join(missing)}")
        self._handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise KeyError(key)
        return self._where[key].get_tensor(key)

    def get_slice(self, key: str):
        """safetensors' lazy slice of `key`: get_shape(), and [a:b] reads only those rows."""
        if key not in self._where:
            raise KeyError(key)
        return self._where[key].get_slice(key)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
