"""Sharded safetensors checkpoints in the Hugging Face layout, and atomic directory writes.

Layout: `model-0000i-of-0000N.safetensors` shards plus `model.safetensors.index.json`
(`{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}`); a single `model.safetensors`
without index is read too. Only safetensors are read: a pickle (`.bin`, `.pt`) from a user path is never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_LISTED = 20
REDOWNLOAD = "re-download it (e.g. `huggingface-cli download openvla/openvla-7b --local-dir DIR`) or save it again"


class MissingCheckpointError(FileNotFoundError, ValueError):
    """A checkpoint directory or one of its files is missing (the message names what and how to get it)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated or not valid safetensors (the message names the file and the fix)."""


def open_safetensors(path: str | Path, device: str = "cpu"):
    """safe_open(path) whose failure on a truncated or corrupt file names the file and the fix."""
    try:
        return safe_open(str(path), framework="pt", device=device)
    except FileNotFoundError:
        raise MissingCheckpointError(f"checkpoint file {path} is missing; {REDOWNLOAD}") from None
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
        raise CorruptCheckpointError(
            f"checkpoint file {path} is truncated or corrupt ({error}); {REDOWNLOAD}"
        ) from None


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > _MAX_LISTED else shown


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; on success it replaces `path` in one rename.

    A crash or exception leaves any previous `path` untouched and removes the partial temporary directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_safetensors(path: str | Path) -> None:
    """Raise as open_safetensors does unless `path` is a complete safetensors file (reads the header only)."""
    with open_safetensors(path):
        pass


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file (errors as in open_safetensors)."""
    with open_safetensors(path, device=device) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def read_weight_map(directory: Path) -> dict[str, str]:
    """Map each tensor name to its shard file, checking that every shard is present."""
    index_path, single_path = directory / INDEX_FILE, directory / SINGLE_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{index_path} is not a safetensors index with a 'weight_map' ({error!r})") from error
    elif single_path.is_file():
        with open_safetensors(single_path) as f:
            weight_map = {name: SINGLE_FILE for name in f.keys()}
    else:
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" (found {pickles}: pickles are never loaded; convert them to safetensors)" if pickles else ""
        raise MissingCheckpointError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")
    missing_shards = sorted({shard for shard in weight_map.values() if not (directory / shard).is_file()})
    if missing_shards:
        raise MissingCheckpointError(
            f"checkpoint {directory} is incomplete: shard files {missing_shards} listed in {INDEX_FILE} are missing; "
            "finish the download (e.g. `huggingface-cli download openvla/openvla-7b --local-dir DIR`)"
        )
    return weight_map


def check_tensor_names(expected: Mapping[str, torch.Size], weight_map: Mapping[str, str], directory: Path) -> None:
    """Raise if the checkpoint's tensor names differ from the model's, listing the missing and unexpected ones."""
    missing = sorted(set(expected) - set(weight_map))
    unexpected = sorted(set(weight_map) - set(expected))
    if missing or unexpected:
        lines = [f"checkpoint {directory} does not match the architecture in its config.json:"]
        if missing:
            lines.append(f"  missing tensors: {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected tensors: {_listing(unexpected)}")
        raise ValueError("\n".join(lines))


def load_into(
    module: nn.Module,
    directory: Path,
    weight_map: Mapping[str, str],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Load every tensor of a (meta-device) module from the shards, one shard in memory at a time.

    Shapes are checked for all tensors before any data is read. Floating-point tensors are cast to `dtype`.
    """
    expected = {name: tensor.shape for name, tensor in module.state_dict().items()}
    check_tensor_names(expected, weight_map, directory)
    shards = sorted(set(weight_map.values()))
    mismatched = []
    for shard in shards:
        with open_safetensors(directory / shard) as f:
            for name in f.keys():
                if name in expected and tuple(f.get_slice(name).get_shape()) != tuple(expected[name]):
                    mismatched.append(
                        f"{name}: checkpoint {f.get_slice(name).get_shape()} vs model {list(expected[name])}"
                    )
    if mismatched:
        raise ValueError(
            f"checkpoint {directory} has tensors of the wrong shape for its config.json: {_listing(mismatched)}"
        )
    read_device = "cpu" if device.type == "meta" else str(device)
    for shard in shards:
        tensors = {}
        with open_safetensors(directory / shard, device=read_device) as f:
            for name in f.keys():
                if weight_map.get(name) != shard:
                    continue
                tensor = f.get_tensor(name)
                tensors[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        module.load_state_dict(tensors, strict=False, assign=True)


def save_sharded(state_dict: Mapping[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    """Write `state_dict` as safetensors shards of at most `max_shard_bytes` (a larger tensor gets its own) + index."""
    sizes = {name: tensor.numel() * tensor.element_size() for name, tensor in state_dict.items()}
    save_sharded_lazily(sizes, state_dict.__getitem__, directory, max_shard_bytes)


def save_sharded_lazily(
    sizes: Mapping[str, int], make_tensor: Callable[[str], torch.Tensor], directory: Path, max_shard_bytes: int
) -> None:
    """`save_sharded` for tensors made on demand: `sizes` gives each tensor's bytes (in order), `make_tensor(name)`
    its data, called while its shard is written, so only one shard's tensors are ever in memory."""
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, size in sizes.items():
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += size
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make_tensor(name).detach().to("cpu").contiguous() for name in names}
        save_file(tensors, directory / filename, {"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, filename))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
