"""Small statistics for evaluation: Wilson score intervals and the forgetting measures.

Definitions used everywhere in eval/ (success rates are fractions in [0, 1]):
- forgetting on a prior task   = base success - fine-tuned success   (positive = forgot; can be negative)
- retained fraction on a task  = fine-tuned success / base success   (NaN when the base success is 0)
- average forgetting           = mean of the per-task forgetting over the prior tasks
- average retained fraction    = mean fine-tuned success / mean base success over the prior tasks
- new-task gain                = fine-tuned success - base success on the new task
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / trials (95% by default).

    Returns (low, high) within [0, 1]; (0.0, 1.0) when trials == 0 (nothing is known).
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return 0.0, 1.0
    n = float(trials)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low, high = max(0.0, center - half), min(1.0, center + half)
    # exact endpoints at the boundaries (the formula gives them up to rounding)
    if successes == 0:
        low = 0.0
    if successes == trials:
        high = 1.0
    return low, high


@dataclass(frozen=True)
class Rate:
    """A success rate with its Wilson 95% interval."""

    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials)

    def to_dict(self) -> dict:
        low, high = self.ci
        return {"successes": self.successes, "trials": self.trials, "rate": self.rate, "ci_low": low, "ci_high": high}


def forgetting(base_rate: float, finetuned_rate: float) -> float:
    """Absolute drop in success on a prior task (base - fine-tuned); negative means it improved."""
    return base_rate - finetuned_rate


def retained_fraction(base_rate: float, finetuned_rate: float) -> float:
    """Fine-tuned success as a fraction of the base success; NaN when the base never succeeded."""
    return finetuned_rate / base_rate if base_rate > 0 else float("nan")


@dataclass
class Comparison:
    """A fine-tuned policy against its base on the prior tasks and the new task."""

    per_task_forgetting: dict[str, float]
    per_task_retained: dict[str, float]
    avg_forgetting: float
    avg_retained: float
    base_prior_success: float
    prior_success: float
    new_task: str | None
    base_new_success: float
    new_success: float
    new_task_gain: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    base: dict[str, float], finetuned: dict[str, float], prior_tasks: list[str], new_task: str | None = None
) -> Comparison:
    """Compare per-task success rates {task: rate} of a fine-tuned policy with the base's.

    `prior_tasks` are the retained-skill tasks; `new_task` (optional) is the fine-tuning target.
    Every task must be present in both dicts (a KeyError names the missing one).
    """
    if not prior_tasks:
        raise ValueError("compare() needs at least one prior task")
    for name, rates in (("base", base), ("fine-tuned", finetuned)):
        missing = [t for t in prior_tasks + ([new_task] if new_task else []) if t not in rates]
        if missing:
            raise KeyError(f"{name} results lack tasks {missing}; they have {sorted(rates)}")
    fg = {t: forgetting(base[t], finetuned[t]) for t in prior_tasks}
    rf = {t: retained_fraction(base[t], finetuned[t]) for t in prior_tasks}
    base_prior = sum(base[t] for t in prior_tasks) / len(prior_tasks)
    ft_prior = sum(finetuned[t] for t in prior_tasks) / len(prior_tasks)
    bn = base[new_task] if new_task else float("nan")
    fn = finetuned[new_task] if new_task else float("nan")
    return Comparison(
        per_task_forgetting=fg,
        per_task_retained=rf,
        avg_forgetting=sum(fg.values()) / len(fg),
        avg_retained=retained_fraction(base_prior, ft_prior),
        base_prior_success=base_prior,
        prior_success=ft_prior,
        new_task=new_task,
        base_new_success=bn,
        new_success=fn,
        new_task_gain=fn - bn,
    )
