"""Fine-tune a VLA with on-policy RL: PPO (default), GRPO or REINFORCE, with LoRA.

    python -m scripts.train_ppo tiny                                  # CPU, a few minutes: toy task, tiny VLA
    python -m scripts.train_ppo --algorithm grpo tiny --total-updates 20
    python -m scripts.train_ppo openvla-7b-a100 --model /path/to/openvla-7b --run-dir runs/carrot-ppo
    python -m scripts.train_ppo openvla-7b-a100 --model /path/to/openvla-7b --run-dir runs/carrot-ppo --resume
    torchrun --nproc-per-node 2 -m scripts.train_ppo tiny --run-dir runs/ddp     # data-parallel (gloo on CPU)

`--algorithm {ppo,grpo,reinforce}` comes first; then a preset (rollouts/presets.py) and any field overrides
(`--help` after the preset lists them). The run writes checkpoints, metrics.jsonl and TensorBoard logs to --run-dir.
"""

from __future__ import annotations

import argparse
import sys

from rollouts import grpo, ppo, reinforce
from rollouts.config import cli
from rollouts.presets import RL_PRESETS
from scripts.cli import entry_point

TRAIN = {"ppo": ppo.train, "grpo": grpo.train, "reinforce": reinforce.train}


@entry_point
def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algorithm", choices=sorted(TRAIN), default="ppo")
    known, rest = pre.parse_known_args(argv)
    cfg = cli(RL_PRESETS[known.algorithm], args=rest, prog=f"train_ppo.py --algorithm {known.algorithm}",
              description=f"{known.algorithm.upper()} fine-tuning (choose with --algorithm {{ppo,grpo,reinforce}}).")
    return TRAIN[known.algorithm](cfg)


if __name__ == "__main__":
    main()
