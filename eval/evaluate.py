"""Evaluate one checkpoint (base, or base + LoRA adapter) on a suite plus the new task, with KL and weight distance.

    policy = load_policy("runs/exp/pi0", adapter_dir="runs/exp/train/ppo_lr1e-4/checkpoints/step_00000020/adapter")
    rec = evaluate_checkpoint(policy, suite, "metaworld/pick-place", out_dir, base_record=base, kl_base=kl_samples)

Writes eval.json, results.csv, results.md (eval/suite.py) and the first videos into out_dir.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from eval.kl import BaseSamples, lora_weight_distance, measure
from eval.suite import (CSV_COLUMNS, EvalRecord, OutputExistsError, Suite, SuiteTask, evaluate, make_record,
                        save_record, table_rows, validate_tasks, vla_actor)
from rollouts.config import ConfigError
from rollouts.constants import UPDATE


def load_policy(model: str | Path, adapter_dir: str | Path | None = None, n_action_bins: int = 256, seed: int = 0,
                device: str | None = None):
    """A VLAPolicy from a checkpoint directory or preset, with the adapter at `adapter_dir` attached (frozen).

    An adapter that does not fit the base model (other architecture or sizes) is a clear error naming both."""
    from vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(model, device=device, seed=seed, n_action_bins=n_action_bins)
    if adapter_dir is not None:
        try:
            policy.load_adapters(adapter_dir, trainable=False)
        except (RuntimeError, KeyError) as e:  # peft/torch shape or key mismatches
            raise ConfigError(f"adapter {adapter_dir} does not fit base model {model}: {e}") from e
    return policy.eval()


def with_new_task(suite: Suite, new_task: str | None, episodes: int | None = None) -> Suite:
    """The suite plus the new task (first), if it is not already listed."""
    if new_task is None or new_task in suite.task_ids:
        return suite
    validate_tasks([new_task])
    n = episodes or suite.tasks[0].episodes
    return Suite(suite.name, [SuiteTask(new_task, n)] + list(suite.tasks), suite.seed, dict(suite.env_options))


def check_compatible(policy, unnorm_key: str | None) -> None:
    """The policy must emit 7-D actions and know `unnorm_key` (a ConfigError lists the keys it has)."""
    from rollouts.run import check_policy

    check_policy(policy, unnorm_key)


def evaluate_checkpoint(policy, suite: Suite, new_task: str | None, out_dir: str | Path,
                        base_record: EvalRecord | None = None, kl_base: BaseSamples | None = None,
                        unnorm_key: str | None = None, num_envs: int = 4, videos_per_task: int = 0,
                        do_sample: bool = False, overwrite: bool = False, merge_adapter: bool | None = None,
                        progress: bool = False, **fields: Any) -> EvalRecord:
    """Run `policy` on `suite` (+ `new_task`), compare with `base_record`, measure KL against `kl_base` (pi0's cached
    samples on new-task observations) and the adapter's weight distance; save into `out_dir`.

    progress: a bar of finished episodes per task.
    merge_adapter: fold the adapter into the weights first (None: when they are fp32). Evaluation needs only pi, and
    the merged model acts the same without a LoRA detour per linear layer; `policy` is then left merged, without
    pi0. bf16 weights are not merged by default: rounding W + dW to bf16 would drop the adapter's small updates."""
    out_dir = Path(out_dir)
    if (out_dir / "eval.json").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir / 'eval.json'} exists; pass overwrite=True (or --overwrite) to replace it")
    check_compatible(policy, unnorm_key)
    suite = with_new_task(suite, new_task)
    t0 = time.perf_counter()
    l2_weight = lora_weight_distance(policy.model)  # before a merge removes the LoRA factors
    if merge_adapter is None:
        merge_adapter = policy.dtype == torch.float32
    if merge_adapter:
        policy.merge_adapters()
    actor = vla_actor(policy, unnorm_key=unnorm_key, do_sample=do_sample)
    results = evaluate(actor, suite, num_envs=num_envs, video_dir=out_dir / "videos" if videos_per_task else None,
                       videos_per_task=videos_per_task, progress=progress)
    kl = measure(policy, kl_base) if kl_base is not None else fields.pop("kl", None)
    rec = make_record(results, suite, new_task=new_task, base=base_record, kl=kl,
                      l2_weight=l2_weight, meta={"do_sample": do_sample}, **fields)
    rec.wall_s = time.perf_counter() - t0
    save_record(rec, out_dir, overwrite=overwrite)
    return rec


def log_eval_record(run, rec: EvalRecord, out_dir: str | Path) -> None:
    """Log an evaluation to a W&B run (rollouts/tracking.py): the results table (results.csv's columns), the
    success rate of every task, forgetting and KL under the eval/ names, and the videos in out_dir/videos."""
    import wandb

    table = wandb.Table(columns=CSV_COLUMNS, data=[[row[c] for c in CSV_COLUMNS] for row in table_rows(rec)])
    scalars = {f"eval/success/{task}": r["rate"] for task, r in rec.tasks.items()}
    scalars.update({f"eval/{k}": v for k, v in {**(rec.comparison or {}), **(rec.kl or {})}.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})  # fmt: skip
    videos = {f"videos/{path.stem}": wandb.Video(str(path), format="mp4")
              for path in sorted((Path(out_dir) / "videos").glob("*.mp4"))}  # fmt: skip
    run.log({UPDATE: rec.step, "eval/results": table, **scalars, **videos})
