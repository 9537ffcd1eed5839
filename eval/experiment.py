"""The whole RL's Razor experiment as resumable stages (scripts/razor.py is its command line).

Stages, in order (each recorded in <run_dir>/stages/ when finished; a rerun skips it, see eval/stages.py):
  demos_<task>     scripted expert demos (envs/demos.py) for each prior task and the new task, in a cache shared by
                   experiments (<cache_dir>/demos/<task>_px<image>_r<render version>_n<N>_s<seed>; generate_demos
                   resumes itself)
  pi0              the base policy: behaviour cloning of a random-init preset on the prior tasks' demos plus
                   `pi0_new_task_demos` demos of the new task (so that pi0 has partial new-task success; with
                   `pi0_new_task_share`, at that share of each batch) (eval/pretrain.py), cached in
                   <cache_dir>/pi0/<hash of its inputs>; the openvla-7b preset skips it: pi0 is the given
                   checkpoint. With `pi0_window` and `pi0_draws` > 1, up to that many pi0s are trained (seeds seed,
                   seed + 1000, ...: another new-task demo, initialisation and batch order; the same prior-task
                   demos), each screened on the suite's new-task episodes; the first inside the window is pi0 (none
                   inside: the first draw, which the window gate then stops)
  warmup           (optional, `warmup`) SFT + LoRA of pi0 on a mixture of expert demos of the prior tasks and a few
                   of the new task (<run_dir>/warmup/demos, train/), the adapter then merged into the weights
                   (<run_dir>/warmup/pi0, a full checkpoint that keeps pi0's action statistics): RL4VLA's route to
                   a base policy with real prior skills. The merged model is pi0 for every later stage.
  kl_base          pi0's sampled action tokens and per-token log-probs on `kl_obs` held-out new-task observations
                   (eval/kl.py), saved to kl_base.npz and shared by the online monitor and the offline evaluations
  eval_base        pi0 on the suite (prior tasks + new task)                          -> evals/base/eval.json
  pi0_window_<lo>_<hi>  (with `pi0_window`) pi0's new-task success must lie in [lo, hi], else the experiment stops
                   here (Pi0OutOfWindow) before any fine-tuning: RL needs room to improve on the new task
  rft_data         (method rft only) pi0's own sampled episodes on the new task, the successful ones kept as a
                   demo dataset (rejection sampling: the cheapest on-policy data)
  fisher           pi0's diagonal Fisher information of the LoRA-adapted weights on the KL observations
                   (eval/predictors.py)                                                  -> fisher.safetensors
  train_<run>      one fine-tuning run per method x learning rate x batch size (rollouts/, all with LoRA; see
                   METHODS), a checkpoint every `checkpoint_every` updates (all kept), the online KL monitor
                   every checkpoint; an interrupted run resumes from its last checkpoint (rollouts' --resume)
  eval_<run>_<n>   each checkpoint on the suite, with the comparison to pi0, KL and weight distance
                                                                                     -> evals/<run>/step_<n>/eval.json
  predict_<run>_<n> each checkpoint's other forgetting predictors (eval/predictors.py)
                                                                               -> evals/<run>/step_<n>/predictors.json
  report           eval/analysis.py fits + plots (analysis/), eval/report.py            -> report.md

A run directory made by another config is refused (ExperimentMismatch); the fields in `RESUMABLE` may change, and
the sweep's lists in `GROWABLE` may gain items (a method, a learning rate: their runs are added to the directory).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal

from eval.stages import EXPERIMENT_FILE, ProcessLauncher, RayLauncher, Stage, StageRunner, run_graph
from rollouts.config import ConfigError
from rollouts.tracking import WandbMode

RESUMABLE = ("run_dir", "cache_dir", "progress", "num_threads", "pi0_threads", "workers", "ray", "stage_gpus",
             "wandb", "wandb_project", "wandb_entity", "wandb_mode", "pi0_window")
# a run's name and seed do not depend on the other items of these lists (batch-size lists are not here: a second
# batch size renames the runs)
GROWABLE = ("methods", "reinforce_lrs", "grpo_lrs", "ppo_lrs", "sft_lrs", "rft_lrs")

METHODS = {
    "reinforce": "REINFORCE + LoRA (rollouts/reinforce.py) as RL's Razor runs it on robots: binary success reward, "
                 "batch-normalized return as baseline, no KL penalty, `rl_trajectories_per_state` episodes per "
                 "initial state",
    "grpo": "GRPO + LoRA (rollouts/grpo.py): binary success reward, groups of `rl_trajectories_per_state` episodes "
            "from one initial state, group-normalized returns, no KL penalty",
    "ppo": "PPO + LoRA (rollouts/ppo.py) with a value head, `ppo_reward` (dense shaping or binary success)",
    "sft": "SFT + LoRA on scripted-expert demos of the new task (rollouts/sft.py)",
    "sft+kl": "SFT + LoRA with `sft_kl_coef` * KL(pi0 || pi) added to the loss (rollouts/sft.py)",
    "rft": "SFT + LoRA on pi0's own successful sampled episodes of the new task (rejection-sampling fine-tuning)",
}
RL_METHODS = ("reinforce", "grpo", "ppo")
SFT_METHODS = ("sft", "sft+kl", "rft")


PI0_DRAW_SEED_STEP = 1000  # pi0 draw k: new-task demos and training seeded seed + 1000 k, apart from a study's seeds


def in_window(window: tuple[float, float], successes: int, episodes: int) -> bool:
    """A success rate lies in [low, high]: the pi0 draws' screening and the window gate use the same test."""
    return window[0] <= successes / episodes <= window[1]


class Pi0OutOfWindow(ConfigError):
    """pi0's new-task success lies outside the experiment's `pi0_window`: no fine-tuning was started."""


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run of the sweep."""

    method: str
    lr: float
    batch_size: int


@dataclass
class ExperimentConfig:
    """One RL's Razor experiment: pi0, a new task, PPO and SFT sweeps, evaluations, report."""

    preset: str = "custom"
    """Name of the preset this config came from (recorded; informational)."""
    run_dir: str = "runs/razor"
    """Experiment directory (resumed if it holds this experiment; refused if it holds another)."""
    cache_dir: str = "runs/cache"
    """Demos and pi0 checkpoints shared by experiments (keyed by their inputs)."""
    model: str = "tiny"
    """vla preset to build pi0 from (tiny/small: trained here by behaviour cloning), or a checkpoint directory used
    as pi0 as is (openvla-7b)."""
    n_action_bins: int = 256
    """Action bins of a preset model."""
    image_size: int = 32
    """Env image size in pixels (the processor resizes to the model's input size)."""
    unnorm_key: str | None = None
    """Action statistics key of a checkpoint (e.g. bridge_orig for OpenVLA on Bridge); None: actions in [-1, 1]."""
    prior_tasks: tuple[str, ...] = ("toy/color-side",)
    """The retained-skill suite: tasks pi0 was trained on and that fine-tuning should not destroy."""
    new_task: str = "toy/reach-side"
    """The fine-tuning task."""
    seed: int = 0
    """Seed of demos, pi0, training runs and the KL samples."""
    env_kwargs: dict[str, int | float | bool | str] = dataclasses.field(default_factory=dict)
    """Extra envs.make options for every env of the experiment (e.g. {"native_camera": false} renders Bridge
    images directly at image_size, ~2x faster than SimplerEnv's 640x480 + resize)."""

    # ---- pi0 ----
    demos_per_task: int = 20
    """Expert demos per prior task for pi0."""
    pi0_new_task_demos: int = 4
    """Demos of the new task mixed into pi0's training data (0: none; more: higher pi0 new-task success)."""
    pi0_new_task_share: float | None = None
    """pi0's data mixture: the expected share of each batch drawn from the new task's demos, the prior tasks sharing
    the rest equally (OpenVLA-style per-dataset sampling weights). None: every demo step equally likely."""
    pi0_steps: int = 60
    """Behaviour-cloning steps of pi0."""
    pi0_batch_size: int = 32
    """pi0 batch size."""
    pi0_lr: float = 3e-3
    """pi0 learning rate."""
    pi0_window: tuple[float, float] | None = None
    """Fine-tune only if pi0's new-task success (eval_base) lies in [low, high]; outside it the experiment stops
    before any fine-tuning (a seed whose pi0 already solves the new task leaves RL nothing to learn). None: any pi0.
    May change on a rerun (the check is then made again)."""
    pi0_draws: int = 1
    """With `pi0_window`: pi0 trainings to try (seeds seed, seed + 1000, ...: each with its own new-task demos) until
    one's new-task success lies in the window (see the module docstring). With one new-task demo, pi0's new-task
    success varies widely with the demo (1/16 to 14/16); screening draws gives a seed's pi0 room to improve instead
    of leaving the seed out."""

    # ---- warm-up (SFT of pi0 on expert demos, merged) ----
    warmup: bool = False
    """Warm pi0 up before fine-tuning (the `warmup` stage): SFT + LoRA on demos of the prior tasks and a few of the
    new task, the adapter merged into pi0."""
    warmup_demos_per_task: int = 20
    """Expert demos per prior task in the warm-up mixture."""
    warmup_new_task_demos: int = 4
    """Expert demos of the new task in the warm-up mixture (0: none)."""
    warmup_steps: int = 200
    """Warm-up SFT optimizer steps."""
    warmup_batch_size: int = 32
    """Warm-up SFT batch size."""
    warmup_lr: float = 5e-4
    """Warm-up LoRA learning rate (OpenVLA's LoRA fine-tuning uses 5e-4)."""

    # ---- fine-tuning ----
    methods: tuple[str, ...] = ("reinforce", "sft")
    """Fine-tuning methods to run (eval/experiment.py's METHODS): reinforce, grpo, ppo, sft, sft+kl, rft."""
    reinforce_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the REINFORCE sweep."""
    grpo_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the GRPO sweep."""
    ppo_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the PPO sweep."""
    sft_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the SFT and SFT + KL sweeps."""
    rft_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the RFT sweep."""
    rl_batch_sizes: tuple[int, ...] = (8,)
    """Episodes per update of the REINFORCE and GRPO sweeps (each a multiple of rl_trajectories_per_state)."""
    rl_trajectories_per_state: int = 4
    """REINFORCE/GRPO episodes from each initial state per update (RL's Razor's robots: 5)."""
    lr_warmup_updates: int = 0
    """Linear learning-rate warm-up of every arm, in updates (then constant; RL's Razor: 10)."""
    lora_lm_head: bool = False
    """Also adapt the LM head (rollouts' lora_lm_head)."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
    gradient_checkpointing: bool = False
    """Recompute each LM layer's activations in the backward pass of every training stage (warm-up, RL, SFT):
    what lets OpenVLA-7B's updates fit one GPU, at ~1/3 more compute."""
    rl_grad_accum_steps: int = 1
    """Micro-batches each RL optimizer step (PPO: each minibatch) is split into (gradients accumulated)."""
    sft_grad_accum_steps: int = 1
    """Micro-batches each SFT / warm-up batch is split into (a divisor of the batch sizes)."""
    updates: int = 4
    """Updates (PPO iterations / SFT optimizer steps) per run."""
    checkpoint_every: int = 2
    """Checkpoint (and evaluate, and measure KL online) every this many updates."""
    ppo_num_envs: int = 8
    """PPO parallel envs."""
    ppo_num_steps: int = 6
    """PPO env steps per env per update."""
    ppo_minibatches: int = 2
    """PPO minibatches per epoch."""
    ppo_epochs: int = 2
    """PPO epochs per update."""
    ppo_reward: Literal["sparse", "dense"] = "dense"
    """PPO reward: the task's dense reward or sparse (binary) success. REINFORCE and GRPO always use success."""
    ppo_env_in_process: bool = False
    """Run the RL methods' envs in the training process instead of worker processes (faster for cheap envs,
    e.g. toy)."""
    sft_updates: int | None = None
    """SFT optimizer steps per run (None: `updates`); SFT steps are much cheaper than PPO iterations."""
    sft_checkpoint_every: int | None = None
    """SFT checkpoint/evaluation interval (None: `checkpoint_every`)."""
    sft_demos: int = 20
    """New-task expert demos for SFT."""
    sft_batch_sizes: tuple[int, ...] = (32,)
    """Batch sizes of the SFT, SFT + KL and RFT sweeps."""
    sft_demo_dir: str | None = None
    """An existing new-task demo dataset for SFT (needed where the new task has no scripted expert)."""
    sft_expert: str = ""
    """"module:Class" of another scripted expert to label the SFT demos with (e.g. one that always picks the same
    of several solutions); empty: the task's own expert."""
    sft_kl_coef: float = 0.1
    """KL(pi0 || pi) weight of the sft+kl method."""
    rft_episodes: int = 64
    """pi0 episodes sampled on the new task for RFT (the successful ones are its training data)."""

    # ---- evaluation ----
    eval_episodes: int = 16
    """Episodes per task per evaluation (>= 75 for claims on SimplerEnv; the quick/cpu presets use fewer)."""
    eval_num_envs: int = 4
    """Parallel envs in evaluations."""
    eval_sample: bool = False
    """Evaluate pi0 and every checkpoint by sampling the action tokens (temperature 1, seeded): the policy the RL
    arms optimize and the distributions the KL measures. False: greedy decoding, as OpenVLA's predict_action."""
    videos_per_task: int = 1
    """Videos of the first K episodes per task (base and final checkpoints only)."""
    kl_obs: int = 16
    """Held-out new-task observations for the KL measurements."""
    kl_samples_per_obs: int = 2
    """pi0 token samples per observation."""
    predictors: bool = True
    """Measure every forgetting predictor of eval/predictors.py per checkpoint (Fisher, activations, weight
    norms, forward KL on the states pi visits)."""
    progress: bool = True
    """Progress bars (with ETA) within each stage."""
    num_threads: int = 0
    """torch threads (0: torch's default); with --workers N each stage process gets its share."""
    pi0_threads: int = 0
    """torch threads of pi0's pretraining (0: every core). It runs alone (every later stage waits for it) and steps
    no envs, so it need not share the CPU; ~1.7x faster on 2 cores than one thread."""
    workers: int = 1
    """Stages run at once: 1 runs them one after another in this process; N > 1 runs up to N in worker processes
    (independent training runs side by side; each checkpoint evaluated as soon as its run has written it)."""
    ray: str | None = None
    """Run the stages as Ray tasks: 'local' starts a Ray instance on this machine, an address (host:port or
    ray://...) joins a cluster (the run and cache directories must then be on storage every node sees)."""
    stage_gpus: float = 0.0
    """GPUs each model stage (pi0, KL, training, evaluation) asks Ray for (1 for the 7B on one GPU each)."""
    wandb: bool = False
    """Log every training run to Weights & Biases too, grouped under the run directory's name (rollouts/tracking.py)."""
    wandb_project: str = "razor"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team; None: your default)."""
    wandb_mode: WandbMode = "auto"
    """online, offline (files for `wandb sync`), or auto: WANDB_MODE if set, else online when logged in."""

    def __post_init__(self):
        self.prior_tasks, self.methods = tuple(self.prior_tasks), tuple(self.methods)
        for name in ("reinforce_lrs", "grpo_lrs", "ppo_lrs", "sft_lrs", "rft_lrs", "rl_batch_sizes", "sft_batch_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        if not self.prior_tasks:
            raise ConfigError("prior_tasks must list at least one task")
        if self.new_task in self.prior_tasks:
            raise ConfigError(f"new_task {self.new_task!r} is also a prior task")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ConfigError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if any(b % self.rl_trajectories_per_state for b in self.rl_batch_sizes) or self.rl_trajectories_per_state < 1:
            raise ConfigError(f"every rl_batch_sizes entry {self.rl_batch_sizes} must be a multiple of "
                             f"rl_trajectories_per_state={self.rl_trajectories_per_state}")
        if "grpo" in self.methods and self.rl_trajectories_per_state < 2:
            raise ConfigError("grpo needs rl_trajectories_per_state >= 2 (its groups)")
        if self.sft_expert and ":" not in self.sft_expert:
            raise ConfigError(f"sft_expert must be 'module:Class', got {self.sft_expert!r}")
        if self.checkpoint_every < 1 or self.updates < self.checkpoint_every:
            raise ConfigError("need 1 <= checkpoint_every <= updates")
        if not 1 <= (self.sft_checkpoint_every or self.checkpoint_every) <= (self.sft_updates or self.updates):
            raise ConfigError("need 1 <= sft_checkpoint_every <= sft_updates")
        if self.warmup and min(self.warmup_steps, self.warmup_batch_size, self.warmup_demos_per_task) < 1:
            raise ConfigError("warm-up needs warmup_steps, warmup_batch_size and warmup_demos_per_task >= 1")
        if self.pi0_window is not None:
            self.pi0_window = tuple(self.pi0_window)
            if len(self.pi0_window) != 2 or not 0 <= self.pi0_window[0] <= self.pi0_window[1] <= 1:
                raise ConfigError(f"pi0_window must be two success rates 0 <= low <= high <= 1, got {self.pi0_window}")
        if self.pi0_new_task_share is not None and not (0 < self.pi0_new_task_share < 1
                                                        and self.pi0_new_task_demos >= 1):
            raise ConfigError(f"pi0_new_task_share must lie in (0, 1) and needs pi0_new_task_demos >= 1, got "
                              f"{self.pi0_new_task_share} with {self.pi0_new_task_demos} demos")
        if self.pi0_draws < 1:
            raise ConfigError(f"pi0_draws must be >= 1, got {self.pi0_draws}")
        if self.pi0_draws > 1 and self.pretrained_model:
            raise ConfigError("pi0_draws > 1 trains several pi0s, but pi0 is the given checkpoint: set --pi0-draws 1")
        if self.pi0_draws > 1 and self.pi0_window is None:
            raise ConfigError("pi0_draws > 1 screens pi0s by their new-task success: give the window (--pi0-window LOW "
                              "HIGH)")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.num_threads < 0 or self.pi0_threads < 0:
            raise ConfigError(f"num_threads and pi0_threads must be >= 0 (0: automatic), got {self.num_threads} and "
                              f"{self.pi0_threads}")
        if (self.ppo_num_envs * self.ppo_num_steps) % self.ppo_minibatches:
            raise ConfigError("ppo_num_envs * ppo_num_steps must be divisible by ppo_minibatches")
        if min(self.rl_grad_accum_steps, self.sft_grad_accum_steps) < 1:
            raise ConfigError("rl_grad_accum_steps and sft_grad_accum_steps must be >= 1")
        minibatch = self.ppo_num_envs * self.ppo_num_steps // self.ppo_minibatches
        if "ppo" in self.methods and minibatch % self.rl_grad_accum_steps:
            raise ConfigError(f"rl_grad_accum_steps={self.rl_grad_accum_steps} must divide PPO's minibatch of "
                              f"{minibatch} samples (ppo_num_envs x ppo_num_steps / ppo_minibatches): choose a "
                              "divisor with --rl-grad-accum-steps")
        sft_batches = self.sft_batch_sizes + ((self.warmup_batch_size,) if self.warmup else ())
        if any(b % self.sft_grad_accum_steps for b in sft_batches):
            raise ConfigError(f"sft_grad_accum_steps={self.sft_grad_accum_steps} must divide every SFT / warm-up "
                              f"batch size {sft_batches}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def pretrained_model(self) -> bool:
        """pi0 is a given checkpoint directory (not trained here)."""
        return Path(self.model).is_dir()


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(task: str) -> str:
    return task.replace("/", "__")


def _lr_tag(lr: float) -> str:
    return f"{lr:g}".replace("+", "")


class Experiment:
    """Runs the stages of one ExperimentConfig (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.dir = Path(cfg.run_dir)
        self.cache = Path(cfg.cache_dir)
        self._check_tasks()  # before the run directory is touched: a failed check leaves nothing behind
        self.stages = StageRunner(self.dir, cfg.to_dict(), ignore_keys=RESUMABLE, log=log,
                                  defaults=dataclasses.asdict(ExperimentConfig()), growable_keys=GROWABLE)

    # ---- set-up checks ----
    def _check_tasks(self) -> None:
        import envs

        if not self.cfg.pretrained_model and self.cfg.model not in ("tiny", "small"):
            raise ConfigError(f"model {self.cfg.model!r}: give a vla preset (tiny, small) or an existing checkpoint "
                             "directory (for the openvla-7b preset: --model /path/to/openvla-7b)")
        for t in (*self.cfg.prior_tasks, self.cfg.new_task):
            envs.get_spec(t)  # unknown ids: KeyError with close matches
        if not self.cfg.pretrained_model or self.cfg.warmup:
            missing = [t for t in self.cfg.prior_tasks if envs.get_spec(t).expert_factory is None]
            if missing:
                raise ConfigError(f"pi0 is trained or warmed up on expert demos, but {missing} have no scripted expert")
        new_task_expert = envs.get_spec(self.cfg.new_task).expert_factory
        if self.cfg.warmup and self.cfg.warmup_new_task_demos and new_task_expert is None:
            raise ConfigError(f"the warm-up mixes in demos of {self.cfg.new_task!r}, which has no scripted expert: "
                              "set --warmup-new-task-demos 0")
        if ("sft" in self.cfg.methods or self.cfg.warmup) and importlib.util.find_spec("rollouts.sft") is None:
            raise ConfigError("method sft and the warm-up need rollouts/sft.py, which this checkout lacks")
        demo_methods = {"sft", "sft+kl"} & set(self.cfg.methods)
        if demo_methods and self.cfg.sft_demo_dir is None and not self.cfg.sft_expert \
                and envs.get_spec(self.cfg.new_task).expert_factory is None:
            raise ConfigError(f"SFT needs demos of {self.cfg.new_task!r} (methods {sorted(demo_methods)}), which has "
                              "no scripted expert: give --sft-demo-dir or drop them from --methods")
        if self.cfg.sft_expert:
            self._sft_expert_class()  # an unknown module or class fails now, not after pi0

    @property
    def env_options(self) -> dict:
        return {"image_size": self.cfg.image_size, **self.cfg.env_kwargs}

    def _sft_expert_class(self):
        module, _, name = self.cfg.sft_expert.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"sft_expert {self.cfg.sft_expert!r} cannot be imported: {e}") from None

    # ---- stages ----
    @staticmethod
    def demos_stage(task: str, n: int, expert: str = "", seed: int | None = None) -> str:
        return (f"demos_{_slug(task)}_n{n}" + (f"_{expert.rpartition(':')[2]}" if expert else "")
                + (f"_s{seed}" if seed is not None else ""))

    def demos(self, task: str, n: int, expert: str = "", seed: int | None = None) -> str:
        """Scripted demos of `task` (by its own expert, or by the "module:Class" `expert`), cached; `seed`: other
        episodes than the experiment seed's (a pi0 draw's)."""
        from envs import get_spec
        from envs.demos import generate_demos

        # the render version keeps demos (and the pi0 trained on them) apart when a task's default images change
        render = get_spec(task).render_version
        extra = f"_{_hash(self.cfg.env_kwargs)}" if self.cfg.env_kwargs else ""
        tag = f"_{expert.rpartition(':')[2]}" if expert else ""
        demo_seed = self.cfg.seed if seed is None else seed
        path = (self.cache / "demos"
                / f"{_slug(task)}_px{self.cfg.image_size}{extra}_r{render}_n{n}_s{demo_seed}{tag}")

        def run():
            ds = generate_demos(task, n, path, seed=demo_seed, env_options=self.env_options,
                                log=self.log if self.cfg.progress else lambda s: None,
                                expert=self._sft_expert_class()() if expert else None)
            return {"path": str(path), "episodes": len(ds), "steps": ds.num_steps,
                    "expert_success_rate": ds.meta["expert_success_rate"]}

        return self.stages.run(self.demos_stage(task, n, expert, seed), run)["path"]

    def pi0(self) -> str:
        cfg = self.cfg
        if cfg.pretrained_model:
            return cfg.model
        from eval.pretrain import PretrainConfig, load_demo_steps, pretrain

        prior = [self.demos(t, cfg.demos_per_task) for t in cfg.prior_tasks]

        def train(seed: int) -> dict:
            dirs, weights = prior, ()  # a draw demonstrates the new task anew: its demo decides much of pi0's success
            if cfg.pi0_new_task_demos:
                draw_seed = None if seed == cfg.seed else seed
                dirs = prior + [self.demos(cfg.new_task, cfg.pi0_new_task_demos, seed=draw_seed)]
                if cfg.pi0_new_task_share is not None:
                    share = cfg.pi0_new_task_share
                    weights = (*[(1 - share) / len(prior)] * len(prior), share)
            pcfg = PretrainConfig(model=cfg.model, n_action_bins=cfg.n_action_bins, steps=cfg.pi0_steps,
                                  batch_size=cfg.pi0_batch_size, learning_rate=cfg.pi0_lr, seed=seed,
                                  log_every=max(1, cfg.pi0_steps // 10), unnorm_key=cfg.unnorm_key,
                                  dataset_weights=weights)
            out = self.cache / "pi0" / _hash([dataclasses.asdict(pcfg), dirs])
            if (out / "pretrain.json").exists():  # cached by an earlier experiment with the same inputs
                return {"path": str(out), "cached": True, **json.loads((out / "pretrain.json").read_text())}
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(cfg.pi0_threads or os.cpu_count() or 1)
            try:
                return {"path": str(out), **pretrain(pcfg, load_demo_steps(dirs), out, log=self.log)}
            finally:
                torch.set_num_threads(threads)

        def run():
            if cfg.pi0_draws == 1:
                return train(cfg.seed)
            low, high = cfg.pi0_window
            draws = []
            for draw in range(cfg.pi0_draws):
                record = train(cfg.seed + PI0_DRAW_SEED_STEP * draw)
                k, n = self.new_task_success(record["path"])
                draws.append({"seed": record["config"]["seed"], "path": record["path"], "successes": k, "episodes": n})
                self.log(f"[pi0] draw {draw + 1}/{cfg.pi0_draws} (seed {draws[-1]['seed']}): {cfg.new_task} {k}/{n}"
                         f" = {k / n:.2f}, {'inside' if in_window(cfg.pi0_window, k, n) else 'outside'} "
                         f"[{low:g}, {high:g}]")
                if in_window(cfg.pi0_window, k, n):
                    return {**record, "draws": draws}
            first = train(cfg.seed)  # none inside: the window gate stops the experiment after eval_base
            return {**first, "draws": draws}

        return self.stages.run("pi0", run)["path"]

    def new_task_success(self, checkpoint: str) -> tuple[int, int]:
        """(successes, episodes) of `checkpoint` on the suite's new-task episodes, run as eval_base runs them (same
        seeds, actor and sampling), without writing a record: how pi0 draws are screened."""
        import torch

        from eval.evaluate import load_policy
        from eval.suite import evaluate, vla_actor

        policy = load_policy(checkpoint, n_action_bins=self.cfg.n_action_bins)
        if self.cfg.eval_sample:
            torch.manual_seed(self.cfg.seed)  # as _evaluate: the new task is the suite's first
        actor = vla_actor(policy, unnorm_key=self.cfg.unnorm_key, do_sample=self.cfg.eval_sample)
        result = evaluate(actor, self.suite().without(self.cfg.prior_tasks), num_envs=self.cfg.eval_num_envs)
        return result[self.cfg.new_task].successes, result[self.cfg.new_task].trials

    def warmup_demos(self) -> list[tuple[str, int]]:
        """(task, number of demos) of the warm-up mixture."""
        demos = [(t, self.cfg.warmup_demos_per_task) for t in self.cfg.prior_tasks]
        return demos + ([(self.cfg.new_task, self.cfg.warmup_new_task_demos)] if self.cfg.warmup_new_task_demos else [])

    def base(self) -> str:
        """pi0 as every stage after it sees it: the warmed-up checkpoint with `warmup`, else pi0."""
        return self.warmup() if self.cfg.warmup else self.pi0()

    def warmup(self) -> str:
        """pi0 warmed up (see the module docstring): the merged checkpoint's directory."""
        from envs.demos import combine_demos
        from eval.evaluate import load_policy
        from rollouts import sft
        from rollouts.checkpoint import latest_checkpoint
        from rollouts.constants import ADAPTER_DIR

        cfg = self.cfg
        pi0 = self.pi0()
        dirs = [self.demos(t, n) for t, n in self.warmup_demos()]
        out = self.dir / "warmup"

        def run():
            mixture = combine_demos(dirs, out / "demos")
            train_dir = out / "train"
            tcfg = sft.SFTConfig(model=pi0, dataset=str(mixture.root), n_action_bins=cfg.n_action_bins,
                                 lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, unnorm_key=cfg.unnorm_key,
                                 learning_rate=cfg.warmup_lr, total_updates=cfg.warmup_steps,
                                 batch_size=cfg.warmup_batch_size, seed=cfg.seed, run_dir=str(train_dir),
                                 resume=(train_dir / "config.json").exists(), log_kl=False,
                                 checkpoint_every=max(1, cfg.warmup_steps // 4), progress=cfg.progress,
                                 torch_threads=cfg.num_threads, gradient_checkpointing=cfg.gradient_checkpointing,
                                 grad_accum_steps=cfg.sft_grad_accum_steps)
            t0 = time.perf_counter()
            summary = sft.train(tcfg)
            gc.collect()  # the trained copy must be gone before a second 7B model is loaded to merge into
            policy = load_policy(pi0, latest_checkpoint(train_dir) / ADAPTER_DIR, n_action_bins=cfg.n_action_bins)
            policy.merge_adapters()  # the warmed-up pi0: LoRA folded into the weights, norm_stats kept in config
            policy.save_pretrained(out / "pi0")
            return {"path": str(out / "pi0"), "episodes": len(mixture), "steps": mixture.num_steps,
                    "wall_s": time.perf_counter() - t0,
                    "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float))}}

        return self.stages.run("warmup", run)["path"]

    def suite(self):
        from eval.suite import Suite, SuiteTask

        tasks = [SuiteTask(self.cfg.new_task, self.cfg.eval_episodes)]
        tasks += [SuiteTask(t, self.cfg.eval_episodes) for t in self.cfg.prior_tasks]
        return Suite("razor", tasks, seed=100_000, env_options=self.env_options)

    def kl_base_path(self, pi0: str) -> Path:
        from eval.kl import collect_observations, sample_base, save_base_samples
        from eval.evaluate import load_policy

        path = self.dir / "kl_base.npz"

        def run():
            images, instr = collect_observations(self.cfg.new_task, self.cfg.kl_obs, seed=200_000,
                                                 env_options=self.env_options)
            policy = load_policy(pi0, n_action_bins=self.cfg.n_action_bins)
            base = sample_base(policy, images, instr, self.cfg.kl_samples_per_obs, seed=self.cfg.seed)
            save_base_samples(base, path)
            return {"path": str(path), "n_samples": len(base.tokens)}

        return Path(self.stages.run("kl_base", run)["path"])

    def eval_base(self, pi0: str) -> Path:
        from eval.evaluate import load_policy

        out = self.dir / "evals" / "base"

        def run():
            policy = load_policy(pi0, n_action_bins=self.cfg.n_action_bins)
            rec = self._evaluate(policy, out, videos_per_task=self.cfg.videos_per_task, run="base", method="base",
                                 step=0, checkpoint=pi0,
                                 kl={"kl_forward": 0.0, "kl_reverse": 0.0, "kl_reverse_is": 0.0, "tv": 0.0})
            self._log_eval_to_wandb(rec, out, "eval_base")
            return {"path": str(out), "rates": rec.rates()}

        self.stages.run("eval_base", run)
        return out

    def pi0_new_success(self) -> tuple[int, int]:
        """(successes, episodes) of pi0 on the new task, from eval_base's record."""
        task = json.loads((self.dir / "evals" / "base" / "eval.json").read_text())["tasks"][self.cfg.new_task]
        return task["successes"], task["trials"]

    def pi0_outside_window(self) -> bool:
        """pi0 has been evaluated and its new-task success lies outside `pi0_window`."""
        if self.cfg.pi0_window is None or not (self.dir / "evals" / "base" / "eval.json").exists():
            return False
        k, n = self.pi0_new_success()
        return not in_window(self.cfg.pi0_window, k, n)

    @property
    def window_stage(self) -> str:
        low, high = self.cfg.pi0_window
        return f"pi0_window_{low:g}_{high:g}"

    def check_pi0_window(self) -> None:
        """The `pi0_window` gate (see the module docstring)."""
        low, high = self.cfg.pi0_window

        def run():
            k, n = self.pi0_new_success()
            if self.pi0_outside_window():
                raise Pi0OutOfWindow(
                    f"pi0 solved {self.cfg.new_task} {k}/{n} = {k / n:.2f}, outside pi0_window [{low:g}, {high:g}], so "
                    "no fine-tuning was started: try another --seed or --pi0-new-task-demos, more --pi0-draws, or widen "
                    "--pi0-window")
            return {"new_success": k / n, "episodes": n, "window": [low, high]}

        self.stages.run(self.window_stage, run)

    def _evaluate(self, policy, out: Path, **fields):
        """`policy` on the suite (eval/evaluate.py's evaluate_checkpoint), greedy or sampled (`eval_sample`)."""
        import torch

        from eval.evaluate import evaluate_checkpoint

        if self.cfg.eval_sample:
            torch.manual_seed(self.cfg.seed)  # the actor samples from torch's global generator: reproducible
        return evaluate_checkpoint(policy, self.suite(), self.cfg.new_task, out, unnorm_key=self.cfg.unnorm_key,
                                   num_envs=self.cfg.eval_num_envs, do_sample=self.cfg.eval_sample, overwrite=True,
                                   progress=self.cfg.progress, **fields)

    def _log_eval_to_wandb(self, rec, out: Path, name: str) -> None:
        """With --wandb, one W&B eval run per evaluation, grouped with the experiment's training runs."""
        if not self.cfg.wandb:
            return
        from eval.evaluate import log_eval_record
        from rollouts.tracking import WandbSettings, start_wandb

        settings = WandbSettings(self.cfg.wandb_project, self.cfg.wandb_entity, self.dir.resolve().name,
                                 self.cfg.wandb_mode)
        run = start_wandb(settings, out, self.cfg.to_dict(), name=name, job_type="eval", keep_id=False)
        log_eval_record(run, rec, out)
        run.finish()

    def arms(self) -> dict[str, Arm]:
        """{run name: Arm} of the sweep: per method every learning rate x batch size. Names carry the batch size
        when the method's sweep has more than one."""
        cfg = self.cfg
        lrs = {"reinforce": cfg.reinforce_lrs, "grpo": cfg.grpo_lrs, "ppo": cfg.ppo_lrs, "sft": cfg.sft_lrs,
               "sft+kl": cfg.sft_lrs, "rft": cfg.rft_lrs}
        batches = {"reinforce": cfg.rl_batch_sizes, "grpo": cfg.rl_batch_sizes, "ppo": (cfg.ppo_num_envs,),
                   "sft": cfg.sft_batch_sizes, "sft+kl": cfg.sft_batch_sizes, "rft": cfg.sft_batch_sizes}
        out = {}
        for m in cfg.methods:
            for lr in lrs[m]:
                for b in batches[m]:
                    name = f"{m}_lr{_lr_tag(lr)}" + (f"_b{b}" if len(batches[m]) > 1 else "")
                    out[name] = Arm(m, lr, b)
        return out

    def runs(self) -> list[tuple[str, str, float]]:
        """(run name, method, lr) of the sweep (batch sizes: `arms`)."""
        return [(name, arm.method, arm.lr) for name, arm in self.arms().items()]

    def rft_data(self, pi0: str) -> str:
        """pi0's successful sampled episodes of the new task as a demo dataset (the RFT arm's data)."""
        from envs.demos import generate_demos
        from eval.evaluate import load_policy
        from vla.gym_policy import GymPolicy

        cfg = self.cfg
        path = self.dir / "rft_data"

        class PolicyExpert:  # the envs/ expert protocol around pi0 sampling at temperature 1
            def __init__(self, policy):
                self.act_fn = GymPolicy(policy, unnorm_key=cfg.unnorm_key, do_sample=True, seed=cfg.seed)

            def reset(self, env, obs, info):
                pass

            def act(self, obs):
                return self.act_fn(obs)

        def run():
            policy = load_policy(pi0, n_action_bins=cfg.n_action_bins)
            ds = generate_demos(cfg.new_task, cfg.rft_episodes, path, seed=300_000, env_options=self.env_options,
                                max_attempts=cfg.rft_episodes, expert=PolicyExpert(policy), log=lambda s: None)
            if ds.num_steps < max(cfg.sft_batch_sizes):
                raise ConfigError(f"pi0's {len(ds)} successful episodes of {cfg.rft_episodes} sampled on "
                                   f"{cfg.new_task} hold {ds.num_steps} steps, fewer than an RFT batch "
                                   f"({max(cfg.sft_batch_sizes)}): raise --rft-episodes or drop rft")
            return {"path": str(path), "episodes": len(ds), "steps": ds.num_steps,
                    "pi0_sampled_success_rate": ds.meta["expert_success_rate"]}

        return self.stages.run("rft_data", run)["path"]

    def fisher(self, pi0: str, kl_base: Path) -> Path:
        """pi0's diagonal Fisher information of the weights the arms' LoRA layers adapt (eval/predictors.py)."""
        from eval.evaluate import load_policy
        from eval.kl import load_base_samples
        from eval.predictors import fisher_diagonal, save_fisher
        from vla.lora import LoraSettings

        path = self.dir / "fisher.safetensors"

        def run():
            policy = load_policy(pi0, n_action_bins=self.cfg.n_action_bins)
            policy.add_lora(LoraSettings(r=self.cfg.lora_rank, alpha=self.cfg.lora_alpha,
                                         lm_head=self.cfg.lora_lm_head))
            fisher = fisher_diagonal(policy, load_base_samples(kl_base))
            save_fisher(fisher, path)
            return {"path": str(path), "layers": len(fisher),
                    "trace": float(sum(float(f.sum()) for f in fisher.values()))}

        return Path(self.stages.run("fisher", run)["path"])

    def train(self, name: str, method: str, lr: float, pi0: str, kl_base: Path) -> str:
        from eval.kl import KLMonitor, load_base_samples

        cfg = self.cfg
        run_dir = self.dir / "train" / name

        batch_size = self.arms()[name].batch_size
        # data stages first (they are stages of their own, shared by the arms that use them)
        if method == "rft":
            demo_dir = self.rft_data(pi0)
        elif method in SFT_METHODS:
            demo_dir = cfg.sft_demo_dir or self.demos(cfg.new_task, cfg.sft_demos, cfg.sft_expert)

        def run():
            monitor = KLMonitor.from_base(load_base_samples(kl_base), log_path=run_dir.parent / f"{name}_kl.jsonl")
            every = cfg.checkpoint_every if method in RL_METHODS else (cfg.sft_checkpoint_every or cfg.checkpoint_every)
            common = dict(model=pi0, n_action_bins=cfg.n_action_bins, lora_rank=cfg.lora_rank,
                          lora_alpha=cfg.lora_alpha, lora_lm_head=cfg.lora_lm_head, unnorm_key=cfg.unnorm_key,
                          learning_rate=lr, warmup_updates=cfg.lr_warmup_updates, seed=cfg.seed,
                          run_dir=str(run_dir), resume=(run_dir / "config.json").exists(),
                          checkpoint_every=every, keep_checkpoints=10_000, callback_every=every,
                          progress=cfg.progress, torch_threads=cfg.num_threads, wandb=cfg.wandb,
                          wandb_project=cfg.wandb_project, wandb_entity=cfg.wandb_entity,
                          wandb_group=self.dir.resolve().name, wandb_mode=cfg.wandb_mode,
                          gradient_checkpointing=cfg.gradient_checkpointing,
                          # KL(pi0 || pi) is the KL monitor's job (held-out pi0 states); the training-batch estimate
                          # would cost a base-model forward per step (~35% of PPO's rollout inference)
                          log_kl=False)
            rl = dict(task=cfg.new_task, env_kwargs=self.env_options, total_updates=cfg.updates,
                      env_in_process=cfg.ppo_env_in_process, grad_accum_steps=cfg.rl_grad_accum_steps, **common)
            t0 = time.perf_counter()
            if method == "ppo":
                from rollouts.ppo import PPOConfig, train

                tcfg = PPOConfig(num_envs=batch_size, num_steps=cfg.ppo_num_steps, reward=cfg.ppo_reward,
                                 num_minibatches=cfg.ppo_minibatches, update_epochs=cfg.ppo_epochs, **rl)
            elif method == "reinforce":
                from rollouts.reinforce import REINFORCEConfig, train

                tcfg = REINFORCEConfig(num_envs=batch_size, group_size=cfg.rl_trajectories_per_state,
                                       reward="sparse", **rl)
            elif method == "grpo":
                from rollouts.grpo import GRPOConfig, train

                tcfg = GRPOConfig(num_envs=batch_size, group_size=cfg.rl_trajectories_per_state, reward="sparse",
                                  **rl)
            else:
                from rollouts.sft import SFTConfig, train

                tcfg = SFTConfig(dataset=demo_dir, total_updates=cfg.sft_updates or cfg.updates, batch_size=batch_size,
                                 kl_coef=cfg.sft_kl_coef if method == "sft+kl" else 0.0,
                                 grad_accum_steps=cfg.sft_grad_accum_steps, **common)
            summary = train(tcfg, callbacks=[monitor.callback])
            return {"run_dir": str(run_dir), "method": method, "lr": lr, "batch_size": batch_size,
                    "description": METHODS[method], "config": tcfg.to_dict(), "wall_s": time.perf_counter() - t0,
                    "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float))}}

        return self.stages.run(f"train_{name}", run)["run_dir"]

    def schedule(self, method: str) -> tuple[int, int]:
        """(updates, checkpoint interval) of a method's runs."""
        cfg = self.cfg
        if method in RL_METHODS:
            return cfg.updates, cfg.checkpoint_every
        return cfg.sft_updates or cfg.updates, cfg.sft_checkpoint_every or cfg.checkpoint_every

    def checkpoint_steps(self, method: str) -> list[int]:
        """The updates a run of `method` checkpoints at (rollouts/run.py: every interval, and the last update)."""
        total, every = self.schedule(method)
        return sorted({*range(every, total + 1, every), total})

    def eval_checkpoint(self, name: str, method: str, lr: float, step: int) -> Path:
        """One checkpoint of run `name` on the suite, with the comparison to pi0, KL and weight distance."""
        from eval.evaluate import load_policy
        from eval.kl import load_base_samples
        from eval.suite import EvalRecord
        from rollouts.checkpoint import CHECKPOINTS, checkpoint_name
        from rollouts.constants import ADAPTER_DIR

        ck = self.dir / "train" / name / CHECKPOINTS / checkpoint_name(step)
        out = self.dir / "evals" / name / f"step_{step:06d}"
        last = step == self.checkpoint_steps(method)[-1]

        def run():
            if not ck.is_dir():
                raise FileNotFoundError(f"checkpoint {ck} does not exist: train_{name} has not written it")
            pi0 = self.base()
            policy = load_policy(pi0, ck / ADAPTER_DIR, n_action_bins=self.cfg.n_action_bins)
            rec = self._evaluate(policy, out, base_record=EvalRecord.load(self.dir / "evals" / "base"),
                                 kl_base=load_base_samples(self.kl_base_path(pi0)),
                                 videos_per_task=self.cfg.videos_per_task if last else 0,
                                 run=name, method=method, lr=lr, step=step, checkpoint=str(ck))
            self._log_eval_to_wandb(rec, out, f"eval_{name}_step{step:06d}")
            return {"path": str(out), "new_success": rec.tasks[self.cfg.new_task]["rate"],
                    "avg_forgetting": (rec.comparison or {}).get("avg_forgetting"),
                    "kl_forward": (rec.kl or {}).get("kl_forward")}

        self.stages.run(f"eval_{name}_step{step:06d}", run)
        return out

    def predict_checkpoint(self, name: str, step: int) -> Path:
        """One checkpoint's predictors of eval/predictors.py -> evals/<run>/step_<n>/predictors.json."""
        from eval.evaluate import load_policy
        from eval.kl import load_base_samples
        from eval.predictors import load_fisher, measure_predictors, visited_observations
        from eval.stages import write_json_atomic
        from rollouts.checkpoint import CHECKPOINTS, checkpoint_name
        from rollouts.constants import ADAPTER_DIR

        arm = self.arms()[name]
        ck = self.dir / "train" / name / CHECKPOINTS / checkpoint_name(step)
        out = self.dir / "evals" / name / f"step_{step:06d}" / "predictors.json"

        def run():
            if not ck.is_dir():
                raise FileNotFoundError(f"checkpoint {ck} does not exist: train_{name} has not written it")
            pi0 = self.base()
            kl_base = self.kl_base_path(pi0)
            policy = load_policy(pi0, ck / ADAPTER_DIR, n_action_bins=self.cfg.n_action_bins)
            visited = visited_observations(policy, self.cfg.new_task, self.cfg.kl_obs, seed=300_000 + step,
                                           env_options=self.env_options, unnorm_key=self.cfg.unnorm_key)
            values = measure_predictors(policy, load_base_samples(kl_base), load_fisher(self.fisher(pi0, kl_base)),
                                        visited, self.cfg.kl_samples_per_obs, seed=self.cfg.seed)
            write_json_atomic(out, {"run": name, "method": arm.method, "lr": arm.lr, "batch_size": arm.batch_size,
                                    "step": step, "predictors": values})
            return {"path": str(out), **{k: values[k] for k in ("weight_l2", "fisher_l2", "act_l2")}}

        self.stages.run(f"predict_{name}_step{step:06d}", run)
        return out

    def report(self) -> Path:
        from eval.analysis import analyze
        from eval.report import write_report

        def run():
            analysis = analyze(self.dir / "evals", out_dir=self.dir / "analysis")
            path = write_report(self.dir, analysis, title=f"RL's Razor experiment ({self.cfg.preset})",
                                config=self.cfg.to_dict(), timings=self.stages.timings())
            return {"report": str(path)}

        return Path(self.stages.run("report", run)["report"])

    def graph(self) -> list[Stage]:
        """Every stage with what it waits for, in an order that runs correctly one after another: pi0 and the
        shared measurements first, then all training runs (the longest stages), then each checkpoint's evaluation
        (waiting for that checkpoint only), then the report."""
        from rollouts.checkpoint import CHECKPOINTS, checkpoint_name
        from rollouts.constants import TRAINER_STATE_FILE

        cfg = self.cfg
        gpu = {"gpus": cfg.stage_gpus}
        stages: list[Stage] = []
        pi0_after: tuple[str, ...] = ()
        if not cfg.pretrained_model:
            demos = [(t, cfg.demos_per_task) for t in cfg.prior_tasks]
            if cfg.pi0_new_task_demos:
                demos.append((cfg.new_task, cfg.pi0_new_task_demos))
            stages += [Stage(self.demos_stage(t, n), partial(self.demos, t, n)) for t, n in demos]
            stages.append(Stage("pi0", self.pi0, after=tuple(self.demos_stage(t, n) for t, n in demos), **gpu))
            pi0_after = ("pi0",)
        if cfg.warmup:
            known = {s.name for s in stages}
            warm = [self.demos_stage(t, n) for t, n in self.warmup_demos()]
            stages += [Stage(self.demos_stage(t, n), partial(self.demos, t, n))
                       for t, n in self.warmup_demos() if self.demos_stage(t, n) not in known]
            stages.append(Stage("warmup", self.warmup, after=(*pi0_after, *warm), **gpu))
            pi0_after = ("warmup",)
        stages.append(Stage("kl_base", lambda: self.kl_base_path(self.base()), after=pi0_after, **gpu))
        stages.append(Stage("eval_base", lambda: self.eval_base(self.base()), after=pi0_after, **gpu))
        gate: tuple[str, ...] = ()
        if cfg.pi0_window is not None:
            stages.append(Stage(self.window_stage, self.check_pi0_window, after=("eval_base",), cpus=1))
            gate = (self.window_stage,)
        if cfg.predictors:
            stages.append(Stage("fisher", lambda: self.fisher(self.base(), self.kl_base_path(self.base())),
                                after=("kl_base",), **gpu))
        methods = {m for _, m, _ in self.runs()}
        sft_demos = self.demos_stage(cfg.new_task, cfg.sft_demos, cfg.sft_expert)
        if cfg.sft_demo_dir is None and methods & {"sft", "sft+kl"} and not any(s.name == sft_demos for s in stages):
            stages.insert(0, Stage(sft_demos, partial(self.demos, cfg.new_task, cfg.sft_demos, cfg.sft_expert)))
        if "rft" in methods:
            stages.append(Stage("rft_data", lambda: self.rft_data(self.base()), after=(*pi0_after, *gate), **gpu))
        evals = []
        for name, method, lr in self.runs():
            after = (*pi0_after, "kl_base", *gate)
            if method in ("sft", "sft+kl") and cfg.sft_demo_dir is None:
                after += (sft_demos,)
            if method == "rft":
                after += ("rft_data",)
            stages.append(Stage(f"train_{name}", partial(self._train_stage, name, method, lr), after=after, **gpu))
            for step in self.checkpoint_steps(method):
                ck = self.dir / "train" / name / CHECKPOINTS / checkpoint_name(step) / TRAINER_STATE_FILE
                evals.append(Stage(f"eval_{name}_step{step:06d}", partial(self.eval_checkpoint, name, method, lr, step),
                                   after=("kl_base", "eval_base"), needs=(ck,), producer=f"train_{name}", **gpu))
                if cfg.predictors:
                    evals.append(Stage(f"predict_{name}_step{step:06d}", partial(self.predict_checkpoint, name, step),
                                       after=("kl_base", "fisher"), needs=(ck,), producer=f"train_{name}", **gpu))
        stages += evals
        stages.append(Stage("report", self.report, after=tuple(s.name for s in stages), cpus=1))
        return stages

    def _train_stage(self, name: str, method: str, lr: float) -> str:
        pi0 = self.base()
        return self.train(name, method, lr, pi0, self.kl_base_path(pi0))

    def run_all(self) -> Path:
        """Run every unfinished stage (one at a time here, or `workers` at once, or on Ray); returns the report."""
        cfg = self.cfg
        if cfg.num_threads:
            import torch

            torch.set_num_threads(cfg.num_threads)
        report_record = self.dir / "stages" / "report.json"
        if report_record.exists():  # the report is cheap and should reflect every finished stage: always rewrite it
            report_record.unlink()
        launcher = None
        if cfg.ray is not None:
            launcher = RayLauncher(run_stage, self.dir.resolve(), address=cfg.ray,
                                   task_kwargs={"cache_dir": str(Path(cfg.cache_dir).resolve())})
        elif cfg.workers > 1:
            launcher = ProcessLauncher(run_stage, self.dir.resolve(),
                                       threads=max(1, (cfg.num_threads or os.cpu_count() or 1) // cfg.workers),
                                       task_kwargs={"cache_dir": str(Path(cfg.cache_dir).resolve())},
                                       preload=("eval.experiment", "eval.evaluate", "eval.predictors", "rollouts.ppo",
                                                "rollouts.reinforce", "rollouts.grpo", "rollouts.sft"))
        workers = cfg.workers if cfg.ray is None else max(cfg.workers, 10_000)  # Ray schedules by resources
        run_graph(self.graph(), self.stages, launcher, workers=workers, log=self.log)
        return self.dir / "report.md"


def run_stage(run_dir: str, name: str, threads: int = 1, log_path: str | None = None,
              cache_dir: str | None = None) -> None:
    """Run stage `name` of the experiment recorded in `run_dir` (a worker process's or Ray task's job).

    The config is the one the directory was made with; the stage records itself as in a run in one process. With
    `log_path`, everything the stage prints (also from C code and subprocesses, and its traceback if it fails)
    goes to that file."""
    saved_fds = None
    if log_path:
        sys.stdout.flush(), sys.stderr.flush()
        saved_fds = os.dup(1), os.dup(2)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os.close(fd)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
        saved = json.loads((Path(run_dir) / EXPERIMENT_FILE).read_text())
        over = {"run_dir": run_dir, "num_threads": threads, "workers": 1, "ray": None}
        cfg = ExperimentConfig(**{**saved, **over, **({"cache_dir": cache_dir} if cache_dir else {})})
        stages = {s.name: s for s in Experiment(cfg, log=lambda m: print(m, flush=True)).graph()}
        if name not in stages:
            raise KeyError(f"no stage {name!r} in the experiment of {run_dir}")
        stages[name].fn()
    except BaseException:
        if log_path:
            traceback.print_exc()
        raise
    finally:
        if saved_fds:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved_fds[0], 1), os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0]), os.close(saved_fds[1])


# ---------------------------------------------------------------------------------------------------- presets

PRESETS: dict[str, ExperimentConfig] = {
    # the pipeline on the toy tasks in a few minutes: for tests and a first look (not a measurement)
    "quick": ExperimentConfig(preset="quick", run_dir="runs/razor-quick", ppo_env_in_process=True, eval_num_envs=1),
    # the known-answer experiment (minutes on CPU): RL's Razor's ParityMNIST setting with this project's own tasks.
    # toy/parity is solved by any of 4 of the 8 dy cells (those of the parity the marker's side and colour set);
    # pi0 is trained on it (labels: a random valid cell per episode; only 8 demos, so partial success: 0.545
    # measured) and on the prior task toy/color-side; the SFT labels pick one arbitrary solution (the lowest valid
    # cell); the RL arms get binary success.
    "parity": ExperimentConfig(
        preset="parity", run_dir="runs/razor-parity", model="tiny", n_action_bins=9, image_size=32,
        prior_tasks=("toy/color-side",), new_task="toy/parity", demos_per_task=256, pi0_new_task_demos=8,
        pi0_steps=400, pi0_batch_size=64, pi0_lr=1e-3,
        methods=("reinforce", "grpo", "sft", "sft+kl", "rft"), reinforce_lrs=(1e-3, 3e-3), grpo_lrs=(3e-3,),
        sft_lrs=(1e-3, 3e-3), rft_lrs=(3e-3,), rl_batch_sizes=(16, 32),
        rl_trajectories_per_state=4, sft_batch_sizes=(16, 32), lora_rank=8, lora_alpha=16, updates=24,
        checkpoint_every=6, ppo_env_in_process=True, sft_updates=24, sft_checkpoint_every=6, sft_demos=64,
        sft_expert="envs.toy:ParityOneSolutionExpert", sft_kl_coef=0.1, rft_episodes=128, eval_episodes=200,
        eval_num_envs=1, videos_per_task=0, kl_obs=64, kl_samples_per_obs=2),
    # the main CPU job: tiny VLA, Meta-World at 64 px, pi0 by behaviour cloning on 3 prior skills plus one demo of
    # the new task, window-close (the prior window-open slides the same window the other way). With that demo pi0
    # started at 7, 8, 9 of 16 over seeds 0-2 (one-thread screening), 6/16 in the seed-0 main job, but 14/16 in the
    # seed-1 main job (a pi0 of the same data differs by float rounding between machines and thread counts, and one
    # demo makes its new-task success swing); so pi0 must start inside the issue's [0.2, 0.6] (`pi0_window`), and up
    # to 4 pi0s are drawn (new-task demo and training seeded seed + 1000 k) until one does: 7 of the 10 window-close
    # pi0s trained so far started inside (seed 1's second draw: 4/16; seed 2's third: 4/16). The earlier new task,
    # button-press, swung from 1/16 to 14/16 and mostly landed above 0.6 (pi0 pressed it with what it learned on
    # button-press-topdown; neither pi0 draws, fewer steps, more prior demos nor a data mixture centred it),
    # drawer-close gave 8, 2, 2 of 16, handle-press 3/16 (seed 0) (README, "Measured"). On button-press,
    # REINFORCE at 3e-4 moved forward KL by 0.01 nats in 24 updates, so its sweep is 1e-3 and 3e-3, set before the
    # runs the README reports.
    # REINFORCE draws 16 episodes from 8 initial states per update: with 8 from 2 (the first setting) the initial
    # state decided the outcome, 8-18 of 24 updates had no gradient (all successes or all failures) and REINFORCE
    # did not improve on pi0 (README, "Measured"). Its update runs in 8 micro-batches (~110-300 samples): one
    # backward over a whole batch's ~1,800 steps ran at 64-69 samples/s on one thread, 4-8 micro-batches at 235-250
    # (scripts/bench_rollouts.py --sections microbatch). SFT's sweep gained 3e-4 (as in cpu-full) after seed 1's
    # windowed run: there no SFT checkpoint at 1e-3 or 3e-3 had forward KL below 0.74 nats, while REINFORCE 1e-3 lay
    # at 0.22-0.84, so the one-curve test had no SFT point in that range (a finished run directory gains the new
    # runs on resume: GROWABLE). 30 checkpoints (2 x 6 REINFORCE, 3 x 6 SFT). Two stages at a time (x1.16 over one
    # at a time on 2 cores, the first version's settings). Measured wall time on the 2-core machine: see the README.
    "cpu": ExperimentConfig(
        preset="cpu", run_dir="runs/razor-cpu", model="tiny", image_size=64,
        prior_tasks=("metaworld/button-press-topdown", "metaworld/drawer-open", "metaworld/window-open"),
        new_task="metaworld/window-close", demos_per_task=30, pi0_new_task_demos=1, pi0_steps=1500,
        pi0_batch_size=64, pi0_lr=1e-3, pi0_window=(0.2, 0.6), pi0_draws=4, methods=("reinforce", "sft"),
        reinforce_lrs=(1e-3, 3e-3), rl_batch_sizes=(16,), rl_trajectories_per_state=2, rl_grad_accum_steps=8,
        ppo_lrs=(3e-4, 1e-3), sft_lrs=(3e-4, 1e-3, 3e-3), lora_rank=16, lora_alpha=16, updates=24, checkpoint_every=4,
        ppo_num_envs=8, ppo_num_steps=150, ppo_minibatches=4, ppo_epochs=2, ppo_reward="dense", sft_updates=360,
        sft_checkpoint_every=60, sft_demos=30, sft_batch_sizes=(32,), rft_episodes=32, eval_episodes=16,
        eval_num_envs=10, videos_per_task=2, kl_obs=32, kl_samples_per_obs=2, workers=2),
    # the powered study on CPU (hours on 2 cores): every method, lr x batch-size sweeps, and enough episodes that a
    # checkpoint's forgetting has standard error <= 0.03 even in the worst case (eval/study.py's episodes_for_se:
    # 3 prior tasks, paired-difference variance <= 0.5 per task -> 186 episodes; 192 = a whole number of waves)
    "cpu-full": ExperimentConfig(
        preset="cpu-full", run_dir="runs/razor-cpu-full", model="tiny", image_size=64,
        prior_tasks=("metaworld/button-press-topdown", "metaworld/drawer-open", "metaworld/window-open"),
        new_task="metaworld/window-close", demos_per_task=30, pi0_new_task_demos=1, pi0_steps=1500,
        pi0_batch_size=64, pi0_lr=1e-3, pi0_window=(0.2, 0.6), pi0_draws=4,
        methods=("reinforce", "grpo", "ppo", "sft", "sft+kl", "rft"),
        reinforce_lrs=(1e-4, 3e-4, 1e-3), grpo_lrs=(1e-4, 3e-4, 1e-3), ppo_lrs=(1e-4, 3e-4, 1e-3),
        sft_lrs=(3e-4, 1e-3, 3e-3), rft_lrs=(3e-4, 1e-3, 3e-3), rl_batch_sizes=(16, 32), rl_trajectories_per_state=2,
        rl_grad_accum_steps=12, sft_batch_sizes=(16, 32), lr_warmup_updates=2, lora_rank=16, lora_alpha=16, updates=24, checkpoint_every=4,
        ppo_num_envs=8, ppo_num_steps=150, ppo_minibatches=4, ppo_epochs=2, ppo_reward="sparse", sft_updates=360,
        sft_checkpoint_every=60, sft_demos=30, rft_episodes=64, eval_episodes=192, eval_num_envs=8,
        videos_per_task=1, kl_obs=64, kl_samples_per_obs=2),
    # the real checkpoint on SimplerEnv Bridge tasks, one A100 (give --model <openvla-7b dir>). OpenVLA-7B alone
    # rarely succeeds on these scenes, so pi0 is first warmed up on Bridge-expert demos of the three prior tasks
    # and a few of the new task (224 px, SimplerEnv's native camera); then the paper's robot protocol on the new
    # task: REINFORCE (binary success, batch-normalized baseline, no KL; 4 episodes per initial state so that a
    # batch of 16, the paper's smallest, holds whole groups: the paper used 5) and SFT, constant LR after 10
    # warm-up updates; 75 evaluation episodes per task. Every update fits one 80 GB A100 through gradient
    # checkpointing and micro-batches of <= 16 samples (REINFORCE: 16 episodes x <= 60 steps in 60 micro-batches;
    # rollouts/budget.py and `razor-preflight` size them). Not run in this repository (no GPU); its miniature is
    # "bridge-mini" below.
    "openvla-7b": ExperimentConfig(
        preset="openvla-7b", run_dir="runs/razor-openvla-7b", model="openvla-7b", image_size=224,
        unnorm_key="bridge_orig",
        prior_tasks=("simpler/PutSpoonOnTableClothInScene", "simpler/StackGreenCubeOnYellowCubeBakedTexInScene",
                     "simpler/PutEggplantInBasketScene"),
        new_task="simpler/PutCarrotOnPlateInScene", warmup=True, warmup_demos_per_task=100,
        warmup_new_task_demos=10, warmup_steps=2000, warmup_batch_size=16, warmup_lr=5e-4,
        methods=("reinforce", "sft"), reinforce_lrs=(1e-5, 3e-5), rl_batch_sizes=(16,), rl_trajectories_per_state=4,
        ppo_lrs=(1e-5, 3e-5), sft_lrs=(1e-5, 3e-5), lr_warmup_updates=10, lora_rank=32, lora_alpha=16,
        gradient_checkpointing=True, rl_grad_accum_steps=60, sft_grad_accum_steps=1, updates=60, checkpoint_every=15,
        ppo_num_envs=16, ppo_num_steps=60, ppo_minibatches=4, ppo_epochs=1, ppo_reward="sparse", sft_demos=100,
        eval_episodes=75, eval_num_envs=16, videos_per_task=3, kl_obs=128, kl_samples_per_obs=2, sft_batch_sizes=(16,),
        stage_gpus=1.0),
}

# the openvla-7b experiment in miniature: the `small` VLA (pi0 by behaviour cloning, Bridge action statistics under
# bridge_orig), one prior task, a few demos and steps, one evaluation episode per task; every stage in minutes on a
# CPU (a slow test), to check the pipeline, not to measure anything
PRESETS["bridge-mini"] = dataclasses.replace(
    PRESETS["openvla-7b"], preset="bridge-mini", run_dir="runs/razor-bridge-mini", model="small", image_size=64,
    env_kwargs={"native_camera": False}, prior_tasks=("simpler/StackGreenCubeOnYellowCubeBakedTexInScene",),
    demos_per_task=1, pi0_new_task_demos=1, pi0_steps=2, pi0_batch_size=4, warmup_demos_per_task=1,
    warmup_new_task_demos=1, warmup_steps=2, warmup_batch_size=4, updates=2, checkpoint_every=2, ppo_num_envs=1,
    ppo_num_steps=2, ppo_minibatches=1, ppo_epochs=1, ppo_env_in_process=True, reinforce_lrs=(1e-4,), ppo_lrs=(1e-4,),
    sft_lrs=(1e-4,), rl_batch_sizes=(2,), rl_trajectories_per_state=2, lr_warmup_updates=0, rl_grad_accum_steps=2,
    sft_grad_accum_steps=2, sft_demos=1, sft_batch_sizes=(4,), eval_episodes=1, eval_num_envs=1, videos_per_task=1,
    kl_obs=2, kl_samples_per_obs=1, lora_rank=2, stage_gpus=0.0)
