"""Fine-tune a VLA on demonstrations (cross-entropy on the 7 action tokens, LoRA), optionally with a KL-to-pi0
regularizer (SFT + KL: --kl-coef > 0).

    python -m scripts.train_sft tiny                                  # CPU: generates 256 toy demos, then trains
    python -m scripts.train_sft tiny --kl-coef 0.5 --run-dir runs/sft-kl
    python -m scripts.train_sft openvla-7b-a100 --model /path/to/openvla-7b --dataset DEMO_DIR --run-dir runs/sft
    torchrun --nproc-per-node 2 -m scripts.train_sft tiny --run-dir runs/sft-ddp

--dataset is an envs/demos.py directory (python -m envs demos ...), a LeRobot v3 dataset directory or a ManiSkill3
trajectory file (.h5 + .json; see envs/formats.py and --dataset-image-key/--dataset-instruction). Presets:
rollouts/presets.py.
"""

from __future__ import annotations

import sys

from rollouts import sft
from rollouts.config import cli
from rollouts.presets import SFT_PRESETS
from scripts.cli import entry_point


@entry_point
def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg = cli(SFT_PRESETS, args=sys.argv[1:] if argv is None else argv, prog="train_sft.py",
              description="Supervised fine-tuning on demonstrations (SFT, or SFT + KL with --kl-coef).")
    return sft.train(cfg)


if __name__ == "__main__":
    main()
