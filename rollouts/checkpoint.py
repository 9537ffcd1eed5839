"""Checkpoints that survive `kill -9`: everything needed to continue a run, written atomically.

Layout of <run_dir>:
    config.json                      the run's config (a resume must match it; see config.check_resume_compatible)
    metrics.jsonl, tb/               logs (see rollouts/logger.py)
    checkpoints/step_<update:08d>/   one complete checkpoint per kept update:
        adapter/                     LoRA adapter in PEFT's format (adapter_config.json, adapter_model.safetensors)
        value_head.safetensors       PPO's value head (absent for algorithms without one)
        optimizer.safetensors        AdamW state tensors; their layout and param_groups in trainer_state.json
        trainer_state.json           counters (update, env_steps, samples), scheduler, each rank's RNG states,
                                     the model's action normalization stats (norm_stats), the config
    checkpoints/latest               name of the newest complete checkpoint

Atomicity: a checkpoint is written into checkpoints/.tmp-step_<n>-<pid>/, each file fsynced, then the folder is
renamed into place (rename is atomic on POSIX) and `latest` replaced; only then are old checkpoints pruned. A kill
at any moment leaves either the previous or the new checkpoint complete; stray .tmp folders are removed on resume.
Nothing is unpickled: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rollouts.constants import OPTIMIZER_FILE, TRAINER_STATE_FILE
from vla.checkpoint import check_safetensors

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit the model/optimizer being restored."""


# ---- atomic folder ---------------------------------------------------------------------------------------------
def checkpoint_name(update: int) -> str:
    return f"{_PREFIX}{update:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (the `latest` pointer, or the highest step folder), or None."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / TRAINER_STATE_FILE).is_file():
            return candidate
    complete = [p for p in list_checkpoints(run_dir) if (p / TRAINER_STATE_FILE).is_file()]
    return complete[-1] if complete else None


def check_readable(folder: Path) -> None:
    """Raise CheckpointError unless the checkpoint's files read back: trainer_state.json is present, every JSON
    file parses and every safetensors file is complete (headers only: cheap even for large adapters)."""
    try:
        read_trainer_state(folder)
        for path in sorted(folder.rglob("*.json")):
            json.loads(path.read_text())
        for path in sorted(folder.rglob("*.safetensors")):
            check_safetensors(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {folder} is unreadable: {error}") from None


def latest_readable_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files read back (None when the run has none). A corrupt newer one is skipped
    with a warning: the older checkpoints are kept for exactly this. All corrupt: CheckpointError."""
    problems = []
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            check_readable(folder)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        for problem in problems:
            warnings.warn(f"{problem}; resuming from the previous checkpoint {folder.name} instead", stacklevel=2)
        return folder
    if problems:
        raise CheckpointError(f"no readable checkpoint in {run_dir} to resume from: {'; '.join(problems)}. "
                              "Start a new run (another --run-dir).")
    return None


def remove_stale_temp(run_dir: str | Path) -> None:
    """Delete half-written checkpoint folders left by a killed run."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def write_atomic(run_dir: str | Path, update: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call write(tmp_dir) to fill a new checkpoint, then move it into place and prune to the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(update)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():  # the same update written again (e.g. a resumed run re-saving): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = root / f".{LATEST}.tmp{os.getpid()}"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- optimizer state without pickle -----------------------------------------------------------------------------
def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> dict[str, Any]:
    """Write the optimizer's tensors to optimizer.safetensors; return the JSON part (param_groups, scalars)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    return {"param_groups": sd["param_groups"], "scalars": scalars, "tensor_keys": sorted(tensors)}


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, layout: dict[str, Any]) -> None:
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(layout["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = layout["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(
            f"optimizer in {folder} has param groups of sizes {[len(g['params']) for g in groups]}, the model "
            f"being trained has {[len(g['params']) for g in current]}: was it saved from a different model/LoRA?"
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---- RNG states as JSON ----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, JSON-serializable."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def read_trainer_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TRAINER_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint: {TRAINER_STATE_FILE} is missing")
    return json.loads(path.read_text())


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
