"""Configuration shared by the four algorithms: the fields every run has, validation, presets and the CLI.

Each algorithm file defines its own dataclass that extends `TrainConfig` (SFT) or `RLConfig` (PPO, GRPO,
REINFORCE) with its hyperparameters; one docstring per field becomes the `--help` text. Configs never read
sys.argv: `cli()` does, through tyro, and rejects unknown flags. `from_dict()` rebuilds a config from a saved
config.json and rejects unknown keys with the closest valid names, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import tyro

import envs
from rollouts.tracking import WandbMode, WandbSettings

C = TypeVar("C", bound="TrainConfig")


class ConfigError(ValueError):
    """A config that cannot run: unknown keys, invalid values, or a resume directory from another config."""


@dataclass
class TrainConfig:
    """Fields shared by every training run (RL and SFT)."""

    # ---- model and LoRA ----
    model: str = "tiny"
    """VLA to fine-tune: a vla/ preset name ("tiny", "small", "openvla-7b") or a local checkpoint directory
    (config.json + safetensors, e.g. a downloaded openvla/openvla-7b)."""
    n_action_bins: int = 256
    """Action bins of a random-init preset (tiny/small only; a checkpoint directory brings its own)."""
    lora_rank: int = 32
    """LoRA rank r on the language model's linear layers."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_lm_head: bool = False
    """Also adapt the LM head (OpenVLA's own fine-tuning script does: it adapts all linear layers). Random-init
    presets need it for peaked action distributions: their frozen head's small weights cap the logits."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights dtype: auto = bfloat16 on CUDA, float32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (needed for the 7B model on one GPU)."""
    unnorm_key: str | None = None
    """Dataset key of the model's action statistics (q01/q99) that map the [-1, 1] action bins to env actions
    (e.g. "bridge_orig" for OpenVLA on Bridge tasks). None: actions stay in [-1, 1]."""

    # ---- optimisation ----
    learning_rate: float = 1e-4
    """Learning rate of the LoRA parameters."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule over the run (after warm-up)."""
    warmup_updates: int = 0
    """Linear warm-up length, in optimizer updates."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (<= 0 disables)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step: each minibatch is split into this many forward/backward passes."""

    # ---- run, logging, checkpoints ----
    total_updates: int = 50
    """Number of optimizer updates in the run (RL: collect + optimise iterations; SFT: gradient steps)."""
    seed: int = 1
    """Seed of torch, numpy, python and the env resets."""
    run_dir: str | None = None
    """Output directory (checkpoints, metrics.jsonl, TensorBoard). None: runs/<run name>."""
    resume: bool = False
    """Continue the run in run_dir from its latest checkpoint (its config must match this one)."""
    checkpoint_every: int = 1
    """Write a checkpoint every this many updates (and at the end). With 1 a killed run never loses a completed
    update; with k, up to k - 1 updates are recomputed after --resume (identically)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (older ones are deleted after a new one is complete)."""
    callback_every: int = 0
    """Call the training callbacks (e.g. eval/'s online KL monitor) every this many updates (0: never)."""
    progress: bool = True
    """Show a tqdm progress bar with ETA."""
    device: str = "auto"
    """torch device: auto = cuda:<local rank> when CUDA is available, else cpu."""
    torch_threads: int = 0
    """torch.set_num_threads for this process (0: leave torch's default)."""
    wandb: bool = False
    """Also log to Weights & Biases: the same metrics against `update`, and the config (rollouts/tracking.py)."""
    wandb_project: str = "razor"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team; None: your default)."""
    wandb_group: str | None = None
    """W&B group (e.g. one per sweep or experiment)."""
    wandb_mode: WandbMode = "auto"
    """online, offline (files for `wandb sync`), or auto: WANDB_MODE if set, else online when logged in."""

    def __post_init__(self) -> None:
        check(self.total_updates >= 1, f"total_updates must be >= 1, got {self.total_updates}")
        check(self.n_action_bins >= 2, f"n_action_bins must be >= 2, got {self.n_action_bins}")
        check(self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}")
        check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        check(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.warmup_updates >= 0, f"warmup_updates must be >= 0, got {self.warmup_updates}")
        check(self.grad_accum_steps >= 1, f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.callback_every >= 0, f"callback_every must be >= 0, got {self.callback_every}")
        check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")

    # Fields that may change when a run is resumed; any other difference is an error.
    RESUMABLE_CHANGES = ("resume", "run_dir", "progress", "checkpoint_every", "keep_checkpoints", "callback_every",
                         "device", "torch_threads", "total_updates", "wandb", "wandb_project", "wandb_entity",
                         "wandb_group", "wandb_mode")

    def run_name(self) -> str:
        """A name carrying the key hyperparameters; overridden by algorithms to add theirs."""
        return f"{_slug(self.model)}_r{self.lora_rank}_lr{self.learning_rate:g}_s{self.seed}"

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.run_name()

    def to_dict(self) -> dict[str, Any]:
        return {"__class__": type(self).__name__, **dataclasses.asdict(self)}

    def wandb_settings(self) -> WandbSettings:
        return WandbSettings(self.wandb_project, self.wandb_entity, self.wandb_group, self.wandb_mode)


@dataclass
class RLConfig(TrainConfig):
    """Fields shared by the on-policy algorithms (PPO, GRPO, REINFORCE): the task and the collection."""

    task: str = "toy/color-side"
    """envs/ task id, e.g. "toy/color-side", "metaworld/pick-place", "simpler/PutCarrotOnPlateInScene"."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra options for envs.make (e.g. image_size 224); the same for every env."""
    num_envs: int = 8
    """Parallel envs, over all ranks (each rank runs num_envs / world_size of them)."""
    env_in_process: bool = False
    """Step the envs in this process instead of one worker process each (right for cheap envs like toy/*)."""
    num_steps: int = 0
    """Env steps per env per update (the rollout length T; 0: the task's horizon). Every update starts from
    seeded resets."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: 1.0 on each step where info["success"] is true, else 0 (episodes end when the env ends them);
    dense: the task's own shaped reward."""
    temperature: float = 1.0
    """Sampling temperature of the behaviour policy (the log-probs are those of the sampled distribution)."""
    kl_coef: float = 0.0
    """Weight of the KL(pi0 || pi) penalty to the base policy, exact over the action bins and summed over the
    7 tokens (0: off; the KL is still logged when log_kl is on)."""
    log_kl: bool = True
    """Compute and log KL(pi0 || pi) on the rollout (one extra forward per sample with adapters disabled)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}")
        check(self.num_steps >= 0, f"num_steps must be >= 0, got {self.num_steps}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        try:
            envs.get_spec(self.task)
        except KeyError as error:
            raise ConfigError(str(error.args[0])) from None

    def vec_options(self) -> dict[str, Any]:
        """Keyword arguments of envs.make_vec besides the task, the env count and the seed."""
        return {**self.env_kwargs, **({"in_process": True} if self.env_in_process else {})}

    def rollout_steps(self) -> int:
        """num_steps, or the task's horizon when it is 0."""
        return self.num_steps or envs.get_spec(self.task).max_episode_steps

    def run_name(self) -> str:
        kl = f"_kl{self.kl_coef:g}" if self.kl_coef else ""
        return f"{_slug(self.task)}_{super().run_name()}{kl}"


# ---- loading, comparing and parsing configs ------------------------------------------------------------------
def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build `cls` from a dict (e.g. a saved config.json). Unknown keys raise ConfigError naming close matches."""
    data = {k: v for k, v in data.items() if k != "__class__"}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=3, cutoff=0.5)
            hints.append(f"{k!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ConfigError(f"unknown {cls.__name__} key(s): {'; '.join(hints)}")
    return cls(**data)


def check_resume_compatible(saved: Mapping[str, Any], current: TrainConfig, run_dir: Path) -> None:
    """Raise ConfigError when the config saved in run_dir differs from `current` in a field that matters."""
    now = current.to_dict()
    if saved.get("__class__") != now["__class__"]:
        raise ConfigError(f"{run_dir} holds a {saved.get('__class__')} run, not a {now['__class__']} run")
    allowed = set(current.RESUMABLE_CHANGES)
    diffs = [
        f"{k}: saved {saved.get(k, '<missing>')!r} != now {now.get(k, '<missing>')!r}"
        for k in sorted(set(saved) | set(now))
        if k not in allowed and _normal(saved.get(k, "<missing>")) != _normal(now.get(k, "<missing>"))
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume {run_dir}: it was started with a different config ({'; '.join(diffs)}). "
            "Use the same settings, or a new --run-dir."
        )


def cli(presets: Mapping[str, tuple[str, TrainConfig]], args: list[str] | None = None, prog: str | None = None,
        description: str | None = None):
    """Parse `<preset> [--field value ...]` into a config. Unknown flags are an error (tyro)."""
    return tyro.extras.overridable_config_cli(dict(presets), args=args, prog=prog, description=description)


def save_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_writable_dir(path: Path, option: str = "--run-dir") -> None:
    """Raise ConfigError unless directory `path` exists and takes files, or could be created (its nearest existing
    ancestor is a directory that takes files). Creates nothing."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == Path(path) else f"lies under {existing}, which is a file"
        raise ConfigError(f"{option} {path} {where}, not a directory; choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"cannot write into {option} {path}: {error.strerror or error} (in {existing}); choose a "
                          f"writable {option}") from None


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as after a JSON round trip


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in Path(text).name or text).strip("-")
