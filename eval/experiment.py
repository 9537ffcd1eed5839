"""The whole RL's Razor experiment as resumable stages (scripts/razor.py is its command line).

Stages, in order (each recorded in <run_dir>/stages/ when finished; a rerun skips it, see eval/stages.py):
  demos_<task>     scripted expert demos (envs/demos.py) for each prior task and the new task, in a cache shared by
                   experiments (<cache_dir>/demos/<task>_px<image>_n<N>_s<seed>; generate_demos resumes itself)
  pi0              the base policy: behaviour cloning of a random-init preset on the prior tasks' demos plus
                   `pi0_new_task_demos` demos of the new task (so that pi0 has partial new-task success)
                   (eval/pretrain.py), cached in <cache_dir>/pi0/<hash of its inputs>; the openvla-7b preset skips
                   it: pi0 is the given checkpoint
  warmup           (optional, `warmup`) SFT + LoRA of pi0 on a mixture of expert demos of the prior tasks and a few
                   of the new task (<run_dir>/warmup/demos, train/), the adapter then merged into the weights
                   (<run_dir>/warmup/pi0, a full checkpoint that keeps pi0's action statistics): RL4VLA's route to
                   a base policy with real prior skills. The merged model is pi0 for every later stage.
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

RESUMABLE = ("run_dir", "cache_dir", "progress", "num_threads")


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
    pi0_steps: int = 60
    """Behaviour-cloning steps of pi0."""
    pi0_batch_size: int = 32
    """pi0 batch size."""
    pi0_lr: float = 3e-3
    """pi0 learning rate."""

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

    def __post_init__(self):
        self.prior_tasks, self.methods = tuple(self.prior_tasks), tuple(self.methods)
        self.ppo_lrs, self.sft_lrs = tuple(self.ppo_lrs), tuple(self.sft_lrs)
        if not self.prior_tasks:
            raise ValueError("prior_tasks must list at least one task")
        if self.new_task in self.prior_tasks:
            raise ValueError(f"new_task {self.new_task!r} is also a prior task")
        unknown = set(self.methods) - {"ppo", "sft"}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from ppo, sft")
        if self.checkpoint_every < 1 or self.updates < self.checkpoint_every:
            raise ValueError("need 1 <= checkpoint_every <= updates")
        if not 1 <= (self.sft_checkpoint_every or self.checkpoint_every) <= (self.sft_updates or self.updates):
            raise ValueError("need 1 <= sft_checkpoint_every <= sft_updates")
        if self.warmup and min(self.warmup_steps, self.warmup_batch_size, self.warmup_demos_per_task) < 1:
            raise ValueError("warm-up needs warmup_steps, warmup_batch_size and warmup_demos_per_task >= 1")
        if (self.ppo_num_envs * self.ppo_num_steps) % self.ppo_minibatches:
            raise ValueError("ppo_num_envs * ppo_num_steps must be divisible by ppo_minibatches")

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
        self.stages = StageRunner(self.dir, cfg.to_dict(), ignore_keys=RESUMABLE, log=log)
        self._check_tasks()

    # ---- set-up checks ----
    def _check_tasks(self) -> None:
        import envs

        if not self.cfg.pretrained_model and self.cfg.model not in ("tiny", "small"):
            raise ValueError(f"model {self.cfg.model!r}: give a vla preset (tiny, small) or an existing checkpoint "
                             "directory (for the openvla-7b preset: --model /path/to/openvla-7b)")
        for t in (*self.cfg.prior_tasks, self.cfg.new_task):
            envs.get_spec(t)  # unknown ids: KeyError with close matches
        if not self.cfg.pretrained_model or self.cfg.warmup:
            missing = [t for t in self.cfg.prior_tasks if envs.get_spec(t).expert_factory is None]
            if missing:
                raise ValueError(f"pi0 is trained (or warmed up) on expert demos, but {missing} have no scripted expert")
        if self.cfg.warmup and self.cfg.warmup_new_task_demos and envs.get_spec(self.cfg.new_task).expert_factory is None:
            raise ValueError(f"the warm-up mixes in demos of {self.cfg.new_task!r}, which has no scripted expert: "
                             "set --warmup-new-task-demos 0")
        if ("sft" in self.cfg.methods or self.cfg.warmup) and importlib.util.find_spec("rollouts.sft") is None:
            raise ValueError("method sft and the warm-up need rollouts/sft.py, which this checkout lacks")
        if "sft" in self.cfg.methods and self.cfg.sft_demo_dir is None \
                and envs.get_spec(self.cfg.new_task).expert_factory is None:
            raise ValueError(f"SFT needs demos of {self.cfg.new_task!r}, which has no scripted expert: give "
                             "--sft-demo-dir or drop sft from --methods")

    @property
    def env_options(self) -> dict:
        return {"image_size": self.cfg.image_size, **self.cfg.env_kwargs}

    # ---- stages ----
    def demos(self, task: str, n: int) -> str:
        from envs.demos import generate_demos

        extra = f"_{_hash(self.cfg.env_kwargs)}" if self.cfg.env_kwargs else ""
        path = self.cache / "demos" / f"{_slug(task)}_px{self.cfg.image_size}{extra}_n{n}_s{self.cfg.seed}"

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
                              log_every=max(1, cfg.pi0_steps // 10), unnorm_key=cfg.unnorm_key)
        out = self.cache / "pi0" / _hash([dataclasses.asdict(pcfg), dirs])

        def run():
            if (out / "pretrain.json").exists():  # cached by an earlier experiment with the same inputs
                return {"path": str(out), "cached": True, **json.loads((out / "pretrain.json").read_text())}
            return {"path": str(out), **pretrain(pcfg, load_demo_steps(dirs), out, log=self.log)}

        return self.stages.run("pi0", run)["path"]

    def warmup(self, pi0: str) -> str:
        """pi0 warmed up (see the module docstring): the merged checkpoint's directory."""
        from envs.demos import combine_demos
        from eval.evaluate import load_policy
        from rollouts import sft
        from rollouts.checkpoint import latest_checkpoint
        from rollouts.constants import ADAPTER_DIR

        cfg = self.cfg
        dirs = [self.demos(t, cfg.warmup_demos_per_task) for t in cfg.prior_tasks]
        if cfg.warmup_new_task_demos:
            dirs.append(self.demos(cfg.new_task, cfg.warmup_new_task_demos))
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
                                 torch_threads=cfg.num_threads)
            t0 = time.perf_counter()
            summary = sft.train(tcfg)
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
                          progress=cfg.progress, torch_threads=cfg.num_threads)
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
        if self.cfg.warmup:
            pi0 = self.warmup(pi0)
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
    # the real checkpoint on SimplerEnv Bridge tasks, one A100 (give --model <openvla-7b dir>). OpenVLA-7B alone
    # rarely succeeds on these scenes, so pi0 is first warmed up on Bridge-expert demos of the three prior tasks
    # and a few of the new task (224 px, SimplerEnv's native camera); then PPO and SFT on the new task; 75
    # evaluation episodes per task. Not run in this repository (no GPU); its miniature is "bridge-mini" below.
    "openvla-7b": ExperimentConfig(
        preset="openvla-7b", run_dir="runs/razor-openvla-7b", model="openvla-7b", image_size=224,
        unnorm_key="bridge_orig",
        prior_tasks=("simpler/PutSpoonOnTableClothInScene", "simpler/StackGreenCubeOnYellowCubeBakedTexInScene",
                     "simpler/PutEggplantInBasketScene"),
        new_task="simpler/PutCarrotOnPlateInScene", warmup=True, warmup_demos_per_task=100,
        warmup_new_task_demos=10, warmup_steps=2000, warmup_batch_size=16, warmup_lr=5e-4, methods=("ppo", "sft"),
        ppo_lrs=(1e-5, 3e-5), sft_lrs=(1e-5, 3e-5), lora_rank=32, lora_alpha=16, updates=60, checkpoint_every=15,
        ppo_num_envs=16, ppo_num_steps=60, ppo_minibatches=8, ppo_epochs=1, ppo_reward="sparse", sft_demos=100,
        eval_episodes=75, eval_num_envs=16, videos_per_task=3, kl_obs=128, kl_samples_per_obs=2, sft_batch_size=16),
}

# the openvla-7b experiment in miniature: the `small` VLA (pi0 by behaviour cloning, Bridge action statistics under
# bridge_orig), one prior task, a few demos and steps, one evaluation episode per task; every stage in minutes on a
# CPU (a slow test), to check the pipeline, not to measure anything
PRESETS["bridge-mini"] = dataclasses.replace(
    PRESETS["openvla-7b"], preset="bridge-mini", run_dir="runs/razor-bridge-mini", model="small", image_size=64,
    env_kwargs={"native_camera": False}, prior_tasks=("simpler/StackGreenCubeOnYellowCubeBakedTexInScene",),
    demos_per_task=1, pi0_new_task_demos=1, pi0_steps=2, pi0_batch_size=4, warmup_demos_per_task=1,
    warmup_new_task_demos=1, warmup_steps=2, warmup_batch_size=4, updates=2, checkpoint_every=2, ppo_num_envs=1,
    ppo_num_steps=2, ppo_minibatches=1, ppo_epochs=1, ppo_env_in_process=True, ppo_lrs=(1e-4,), sft_lrs=(1e-4,),
    sft_demos=1, sft_batch_size=4, eval_episodes=1, eval_num_envs=1, videos_per_task=1, kl_obs=2,
    kl_samples_per_obs=1, lora_rank=2)
