"""The whole RL's Razor experiment as resumable stages (scripts/razor.py is its command line).

Stages, in order (each recorded in <run_dir>/stages/ when finished; a rerun skips it, see eval/stages.py):
  demos_<task>     scripted expert demos (envs/demos.py) for each prior task and the new task, in a cache shared by
                   experiments (<cache_dir>/demos/<task>_px<image>_n<N>_s<seed>; generate_demos resumes itself)
  pi0              the base policy: behaviour cloning of a random-init preset on the prior tasks' demos plus
                   `pi0_new_task_demos` demos of the new task (so that pi0 has partial new-task success)
                   (eval/pretrain.py), cached in <cache_dir>/pi0/<hash of its inputs>; the openvla-7b preset skips
                   it: pi0 is the given checkpoint
  kl_base          pi0's sampled action tokens and per-token log-probs on `kl_obs` held-out new-task observations
                   (eval/kl.py), saved to kl_base.npz and shared by the online monitor and the offline evaluations
  eval_base        pi0 on the suite (prior tasks + new task)                          -> evals/base/eval.json
  train_<run>      one fine-tuning run per method x learning rate (rollouts/: PPO+LoRA, SFT+LoRA), a checkpoint
                   every `checkpoint_every` updates (all kept), the online KL monitor every checkpoint; an
                   interrupted run resumes from its last checkpoint (rollouts' --resume)
  eval_<run>_<n>   each checkpoint on the suite, with the comparison to pi0, KL and weight distance
                                                                                     -> evals/<run>/step_<n>/eval.json
  report           eval/analysis.py fits + plots (analysis/), eval/report.py            -> report.md

A run directory made by another config is refused (ExperimentMismatch); the fields in `RESUMABLE` may change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from eval.stages import StageRunner
from rollouts.config import ConfigError
from rollouts.tracking import WandbMode

RESUMABLE = ("run_dir", "cache_dir", "progress", "num_threads", "wandb", "wandb_project", "wandb_entity", "wandb_mode")


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

    # ---- pi0 ----
    demos_per_task: int = 20
    """Expert demos per prior task for pi0."""
    pi0_new_task_demos: int = 4
    """Demos of the new task mixed into pi0's training data (0: none; more: higher pi0 new-task success)."""
    pi0_steps: int = 60
    """Behaviour-cloning steps of pi0."""
    pi0_batch_size: int = 32
    """pi0 batch size."""
    pi0_lr: float = 3e-3
    """pi0 learning rate."""

    # ---- fine-tuning ----
    methods: tuple[str, ...] = ("ppo", "sft")
    """Fine-tuning methods to run: ppo (PPO + LoRA, rollouts/ppo.py) and sft (SFT + LoRA on new-task demos)."""
    ppo_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the PPO sweep."""
    sft_lrs: tuple[float, ...] = (3e-4,)
    """LoRA learning rates of the SFT sweep."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
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
    """PPO reward: the task's dense reward or sparse success."""
    ppo_env_in_process: bool = False
    """Run PPO's envs in the training process instead of worker processes (faster for cheap envs, e.g. toy)."""
    sft_updates: int | None = None
    """SFT optimizer steps per run (None: `updates`); SFT steps are much cheaper than PPO iterations."""
    sft_checkpoint_every: int | None = None
    """SFT checkpoint/evaluation interval (None: `checkpoint_every`)."""
    sft_demos: int = 20
    """New-task expert demos for SFT."""
    sft_batch_size: int = 32
    """SFT batch size."""
    sft_demo_dir: str | None = None
    """An existing new-task demo dataset for SFT (needed where the new task has no scripted expert)."""

    # ---- evaluation ----
    eval_episodes: int = 16
    """Episodes per task per evaluation (>= 75 for claims on SimplerEnv; the quick/cpu presets use fewer)."""
    eval_num_envs: int = 4
    """Parallel envs in evaluations."""
    videos_per_task: int = 1
    """Videos of the first K episodes per task (base and final checkpoints only)."""
    kl_obs: int = 16
    """Held-out new-task observations for the KL measurements."""
    kl_samples_per_obs: int = 2
    """pi0 token samples per observation."""
    progress: bool = False
    """Progress bars."""
    num_threads: int = 0
    """torch threads (0: torch's default)."""
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
        self.ppo_lrs, self.sft_lrs = tuple(self.ppo_lrs), tuple(self.sft_lrs)
        if not self.prior_tasks:
            raise ConfigError("prior_tasks must list at least one task")
        if self.new_task in self.prior_tasks:
            raise ConfigError(f"new_task {self.new_task!r} is also a prior task")
        unknown = set(self.methods) - {"ppo", "sft"}
        if unknown:
            raise ConfigError(f"unknown methods {sorted(unknown)}; choose from ppo, sft")
        if self.checkpoint_every < 1 or self.updates < self.checkpoint_every:
            raise ConfigError("need 1 <= checkpoint_every <= updates")
        if not 1 <= (self.sft_checkpoint_every or self.checkpoint_every) <= (self.sft_updates or self.updates):
            raise ConfigError("need 1 <= sft_checkpoint_every <= sft_updates")
        if (self.ppo_num_envs * self.ppo_num_steps) % self.ppo_minibatches:
            raise ConfigError("ppo_num_envs * ppo_num_steps must be divisible by ppo_minibatches")

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
        self.stages = StageRunner(self.dir, cfg.to_dict(), ignore_keys=RESUMABLE, log=log)

    # ---- set-up checks ----
    def _check_tasks(self) -> None:
        import envs

        if not self.cfg.pretrained_model and self.cfg.model not in ("tiny", "small"):
            raise ConfigError(f"model {self.cfg.model!r}: give a vla preset (tiny, small) or an existing checkpoint "
                             "directory (for the openvla-7b preset: --model /path/to/openvla-7b)")
        for t in (*self.cfg.prior_tasks, self.cfg.new_task):
            envs.get_spec(t)  # unknown ids: KeyError with close matches
        if not self.cfg.pretrained_model:
            missing = [t for t in self.cfg.prior_tasks if envs.get_spec(t).expert_factory is None]
            if missing:
                raise ConfigError(f"pi0 is trained on expert demos, but {missing} have no scripted expert")
        if "sft" in self.cfg.methods and importlib.util.find_spec("rollouts.sft") is None:
            raise ConfigError("method sft needs rollouts/sft.py, which this checkout lacks; use --methods ppo")
        if "sft" in self.cfg.methods and self.cfg.sft_demo_dir is None \
                and envs.get_spec(self.cfg.new_task).expert_factory is None:
            raise ConfigError(f"SFT needs demos of {self.cfg.new_task!r}, which has no scripted expert: give "
                             "--sft-demo-dir or drop sft from --methods")

    @property
    def env_options(self) -> dict:
        return {"image_size": self.cfg.image_size}

    # ---- stages ----
    def demos(self, task: str, n: int) -> str:
        from envs.demos import generate_demos

        path = self.cache / "demos" / f"{_slug(task)}_px{self.cfg.image_size}_n{n}_s{self.cfg.seed}"

        def run():
            ds = generate_demos(task, n, path, seed=self.cfg.seed, env_options=self.env_options, log=lambda s: None)
            return {"path": str(path), "episodes": len(ds), "steps": ds.num_steps,
                    "expert_success_rate": ds.meta["expert_success_rate"]}

        return self.stages.run(f"demos_{_slug(task)}_n{n}", run)["path"]

    def pi0(self) -> str:
        cfg = self.cfg
        if cfg.pretrained_model:
            return cfg.model
        from eval.pretrain import PretrainConfig, load_demo_steps, pretrain

        dirs = [self.demos(t, cfg.demos_per_task) for t in cfg.prior_tasks]
        if cfg.pi0_new_task_demos:
            dirs.append(self.demos(cfg.new_task, cfg.pi0_new_task_demos))
        pcfg = PretrainConfig(model=cfg.model, n_action_bins=cfg.n_action_bins, steps=cfg.pi0_steps,
                              batch_size=cfg.pi0_batch_size, learning_rate=cfg.pi0_lr, seed=cfg.seed,
                              log_every=max(1, cfg.pi0_steps // 10))
        out = self.cache / "pi0" / _hash([dataclasses.asdict(pcfg), dirs])

        def run():
            if (out / "pretrain.json").exists():  # cached by an earlier experiment with the same inputs
                return {"path": str(out), "cached": True, **json.loads((out / "pretrain.json").read_text())}
            return {"path": str(out), **pretrain(pcfg, load_demo_steps(dirs), out, log=self.log)}

        return self.stages.run("pi0", run)["path"]

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
        from eval.evaluate import evaluate_checkpoint, load_policy

        out = self.dir / "evals" / "base"

        def run():
            policy = load_policy(pi0, n_action_bins=self.cfg.n_action_bins)
            rec = evaluate_checkpoint(policy, self.suite(), self.cfg.new_task, out, unnorm_key=self.cfg.unnorm_key,
                                      num_envs=self.cfg.eval_num_envs, videos_per_task=self.cfg.videos_per_task,
                                      overwrite=True, run="base", method="base", step=0, checkpoint=pi0,
                                      kl={"kl_forward": 0.0, "kl_reverse": 0.0, "kl_reverse_is": 0.0, "tv": 0.0})
            return {"path": str(out), "rates": rec.rates()}

        self.stages.run("eval_base", run)
        return out

    def runs(self) -> list[tuple[str, str, float]]:
        """(run name, method, lr) of the sweep."""
        out = []
        for m in self.cfg.methods:
            for lr in (self.cfg.ppo_lrs if m == "ppo" else self.cfg.sft_lrs):
                out.append((f"{m}_lr{_lr_tag(lr)}", m, lr))
        return out

    def train(self, name: str, method: str, lr: float, pi0: str, kl_base: Path) -> str:
        from eval.kl import KLMonitor, load_base_samples

        cfg = self.cfg
        run_dir = self.dir / "train" / name

        def run():
            monitor = KLMonitor.from_base(load_base_samples(kl_base), log_path=run_dir.parent / f"{name}_kl.jsonl")
            every = cfg.checkpoint_every if method == "ppo" else (cfg.sft_checkpoint_every or cfg.checkpoint_every)
            common = dict(model=pi0, n_action_bins=cfg.n_action_bins, lora_rank=cfg.lora_rank,
                          lora_alpha=cfg.lora_alpha, unnorm_key=cfg.unnorm_key, learning_rate=lr, seed=cfg.seed,
                          run_dir=str(run_dir), resume=(run_dir / "config.json").exists(),
                          checkpoint_every=every, keep_checkpoints=10_000, callback_every=every,
                          progress=cfg.progress, torch_threads=cfg.num_threads, wandb=cfg.wandb,
                          wandb_project=cfg.wandb_project, wandb_entity=cfg.wandb_entity,
                          wandb_group=self.dir.resolve().name, wandb_mode=cfg.wandb_mode)
            t0 = time.perf_counter()
            if method == "ppo":
                from rollouts.ppo import PPOConfig, train

                tcfg = PPOConfig(task=cfg.new_task, env_kwargs=self.env_options, num_envs=cfg.ppo_num_envs,
                                 num_steps=cfg.ppo_num_steps, total_updates=cfg.updates, reward=cfg.ppo_reward,
                                 num_minibatches=cfg.ppo_minibatches, update_epochs=cfg.ppo_epochs,
                                 env_in_process=cfg.ppo_env_in_process, **common)
                summary = train(tcfg, callbacks=[monitor.callback])
            else:
                from rollouts import sft

                demo_dir = cfg.sft_demo_dir or self.demos(cfg.new_task, cfg.sft_demos)
                tcfg = sft.SFTConfig(dataset=demo_dir, total_updates=cfg.sft_updates or cfg.updates,
                                     batch_size=cfg.sft_batch_size, **common)
                summary = sft.train(tcfg, callbacks=[monitor.callback])
            return {"run_dir": str(run_dir), "method": method, "lr": lr, "wall_s": time.perf_counter() - t0,
                    "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float))}}

        return self.stages.run(f"train_{name}", run)["run_dir"]

    def eval_checkpoints(self, name: str, method: str, lr: float, pi0: str, run_dir: str, kl_base: Path) -> None:
        from eval.evaluate import evaluate_checkpoint, load_policy
        from eval.kl import load_base_samples
        from eval.suite import EvalRecord
        from rollouts.checkpoint import list_checkpoints
        from rollouts.constants import ADAPTER_DIR

        base = EvalRecord.load(self.dir / "evals" / "base")
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise FileNotFoundError(f"{run_dir} has no checkpoints to evaluate")
        for i, ck in enumerate(ckpts):
            step = int(ck.name.split("_")[-1])
            out = self.dir / "evals" / name / f"step_{step:06d}"
            last = i == len(ckpts) - 1

            def run(ck=ck, step=step, out=out, last=last):
                policy = load_policy(pi0, ck / ADAPTER_DIR, n_action_bins=self.cfg.n_action_bins)
                rec = evaluate_checkpoint(policy, self.suite(), self.cfg.new_task, out, base_record=base,
                                          kl_base=load_base_samples(kl_base), unnorm_key=self.cfg.unnorm_key,
                                          num_envs=self.cfg.eval_num_envs,
                                          videos_per_task=self.cfg.videos_per_task if last else 0, overwrite=True,
                                          run=name, method=method, lr=lr, step=step, checkpoint=str(ck))
                return {"path": str(out), "new_success": rec.tasks[self.cfg.new_task]["rate"],
                        "avg_forgetting": (rec.comparison or {}).get("avg_forgetting"),
                        "kl_forward": (rec.kl or {}).get("kl_forward")}

            self.stages.run(f"eval_{name}_step{step:06d}", run)

    def report(self) -> Path:
        from eval.analysis import analyze
        from eval.report import write_report

        def run():
            analysis = analyze(self.dir / "evals", out_dir=self.dir / "analysis")
            path = write_report(self.dir, analysis, title=f"RL's Razor experiment ({self.cfg.preset})",
                                config=self.cfg.to_dict(), timings=self.stages.timings())
            return {"report": str(path)}

        # the report is cheap and should reflect every finished stage: always rewrite it
        rec = self.dir / "stages" / "report.json"
        if rec.exists():
            rec.unlink()
        return Path(self.stages.run("report", run)["report"])

    def run_all(self) -> Path:
        if self.cfg.num_threads:
            import torch

            torch.set_num_threads(self.cfg.num_threads)
        pi0 = self.pi0()
        kl_base = self.kl_base_path(pi0)
        self.eval_base(pi0)
        for name, method, lr in self.runs():
            run_dir = self.train(name, method, lr, pi0, kl_base)
            self.eval_checkpoints(name, method, lr, pi0, run_dir, kl_base)
        return self.report()


# ---------------------------------------------------------------------------------------------------- presets

PRESETS: dict[str, ExperimentConfig] = {
    # the pipeline on the toy tasks in a few minutes: for tests and a first look (not a measurement)
    "quick": ExperimentConfig(preset="quick", run_dir="runs/razor-quick", ppo_env_in_process=True, eval_num_envs=1),
    # the main CPU job: tiny VLA, Meta-World at 64 px, pi0 by behaviour cloning on 3 prior skills plus a few demos
    # of the new task (partial new-task success). PPO collects whole episodes per update (num_steps = the new
    # task's 150-step horizon); SFT's learning rates are higher than PPO's, as in the paper's sweeps, so that its
    # checkpoints span a range of KL. Measured wall time on the 2-core machine: see the README.
    "cpu": ExperimentConfig(
        preset="cpu", run_dir="runs/razor-cpu", model="tiny", image_size=64,
        prior_tasks=("metaworld/button-press-topdown", "metaworld/drawer-open", "metaworld/window-open"),
        new_task="metaworld/drawer-close", demos_per_task=30, pi0_new_task_demos=4, pi0_steps=1500,
        pi0_batch_size=64, pi0_lr=1e-3, ppo_lrs=(3e-4, 1e-3), sft_lrs=(1e-3, 3e-3), lora_rank=16, lora_alpha=16,
        updates=16, checkpoint_every=4, ppo_num_envs=8, ppo_num_steps=150, ppo_minibatches=4, ppo_epochs=2,
        ppo_reward="dense", sft_updates=400, sft_checkpoint_every=100, sft_demos=30, sft_batch_size=32,
        eval_episodes=16, eval_num_envs=10, videos_per_task=2, kl_obs=32, kl_samples_per_obs=2),
    # the real checkpoint on SimplerEnv Bridge tasks, one A100 (give --model <openvla-7b dir>)
    "openvla-7b": ExperimentConfig(
        preset="openvla-7b", run_dir="runs/razor-openvla-7b", model="openvla-7b", image_size=224,
        unnorm_key="bridge_orig",
        prior_tasks=("simpler/PutSpoonOnTableClothInScene", "simpler/StackGreenCubeOnYellowCubeBakedTexInScene",
                     "simpler/PutEggplantInBasketScene"),
        new_task="simpler/PutCarrotOnPlateInScene", methods=("ppo", "sft"), ppo_lrs=(1e-5, 3e-5),
        sft_lrs=(1e-5, 3e-5), lora_rank=32, lora_alpha=16, updates=60, checkpoint_every=15, ppo_num_envs=16,
        ppo_num_steps=60, ppo_minibatches=8, ppo_epochs=1, ppo_reward="sparse", eval_episodes=75, eval_num_envs=16,
        videos_per_task=3, kl_obs=128, kl_samples_per_obs=2, sft_batch_size=16),
}
