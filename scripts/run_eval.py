"""Evaluate a checkpoint (base, or base + LoRA adapter) on a retained-skill suite and a new task; optional KL.

    python -m scripts.run_eval --model runs/exp/pi0 --suite metaworld --new-task metaworld/pick-place \
        --adapter runs/exp/train/ppo_lr0.0001/checkpoints/step_00000020/adapter \
        --base-record runs/exp/evals/base --out runs/exp/evals/ppo_step20

Writes eval.json, results.csv, results.md (and videos with --videos-per-task) into --out. With --adapter and
--kl-obs > 0, also the forward/reverse KL and TV of the adapter policy against its base (adapters disabled) on
--kl-obs held-out new-task observations, and the adapter's weight distance. --base-record adds the comparison
(forgetting per prior task, retained fraction, new-task gain); it must come from the same suite and seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

from eval.evaluate import evaluate_checkpoint, load_policy, log_eval_record
from eval.kl import collect_observations, sample_base
from eval.suite import EvalRecord, load_suite
from rollouts.tracking import WandbMode, WandbSettings, start_wandb
from scripts.cli import entry_point


@dataclass
class Args:
    model: str
    """Base model: a vla preset ("tiny", "small") or a checkpoint directory (e.g. a downloaded openvla-7b)."""
    out: str
    """Output directory for eval.json, results.csv, results.md, videos/."""
    suite: str = "metaworld"
    """Built-in suite (metaworld, metaworld-mt50, maniskill-panda, simpler-bridge, toy) or a YAML file."""
    new_task: str | None = None
    """The fine-tuning task (added to the suite if absent; excluded from the prior-task averages)."""
    adapter: str | None = None
    """LoRA adapter directory (PEFT format, e.g. <run>/checkpoints/step_N/adapter). None: evaluate the base."""
    base_record: str | None = None
    """eval.json (or its directory) of the base policy on the same suite, for the comparison."""
    episodes: int | None = None
    """Episodes per task (default: the suite's, 75 for built-ins)."""
    tasks: tuple[str, ...] | None = None
    """Restrict the suite to these task ids."""
    image_size: int | None = None
    """Env image size (default: the task's)."""
    num_envs: int = 4
    """Parallel envs per task."""
    videos_per_task: int = 0
    """Record the first K episodes of every task as mp4."""
    unnorm_key: str | None = None
    """Action statistics key of the model (e.g. bridge_orig for OpenVLA); None keeps actions in [-1, 1]."""
    n_action_bins: int = 256
    """Action bins of a preset model (ignored for checkpoint directories)."""
    kl_obs: int = 32
    """Held-out new-task observations for the KL measurement (0: skip)."""
    sample: bool = False
    """Sample actions instead of greedy decoding."""
    overwrite: bool = False
    """Replace an existing eval.json in --out."""
    method: str = ""
    """Label stored in the record (e.g. ppo, sft, base)."""
    wandb: bool = False
    """Also log the results table, success rates, KL and videos to Weights & Biases (into --out/wandb)."""
    wandb_project: str = "razor"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team; None: your default)."""
    wandb_group: str | None = None
    """W&B group (e.g. the training run's)."""
    wandb_mode: WandbMode = "auto"
    """online, offline (files for `wandb sync`), or auto: WANDB_MODE if set, else online when logged in."""


@entry_point
def main(args: Args | None = None) -> EvalRecord:
    args = args or tyro.cli(Args)
    suite = load_suite(args.suite, episodes=args.episodes, tasks=args.tasks)
    if args.image_size:
        suite.env_options["image_size"] = args.image_size
    policy = load_policy(args.model, args.adapter, n_action_bins=args.n_action_bins)
    base = EvalRecord.load(args.base_record) if args.base_record else None
    kl_base = None
    if args.adapter and args.new_task and args.kl_obs > 0:
        images, instr = collect_observations(args.new_task, args.kl_obs, env_options=suite.env_options)
        kl_base = sample_base(policy, images, instr)
    rec = evaluate_checkpoint(policy, suite, args.new_task, args.out, base_record=base, kl_base=kl_base,
                              unnorm_key=args.unnorm_key, num_envs=args.num_envs,
                              videos_per_task=args.videos_per_task, do_sample=args.sample, overwrite=args.overwrite,
                              method=args.method or ("base" if args.adapter is None else "finetuned"),
                              checkpoint=args.adapter or args.model)
    if args.wandb:
        settings = WandbSettings(args.wandb_project, args.wandb_entity, args.wandb_group, args.wandb_mode)
        run = start_wandb(settings, Path(args.out), asdict(args), name=f"eval_{Path(args.out).name}", job_type="eval",
                          keep_id=False)  # fmt: skip
        log_eval_record(run, rec, args.out)
        run.finish()
    print((Path(args.out) / "results.md").read_text())
    return rec


if __name__ == "__main__":
    main()
