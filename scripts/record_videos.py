"""Record rollout videos of a policy (base, or base + LoRA adapter) on one task.

    python -m scripts.record_videos --model tiny --task metaworld/pick-place --episodes 3 --out runs/videos
    python -m scripts.record_videos --model /data/openvla-7b --unnorm-key bridge_orig \
        --task simpler/PutCarrotOnPlateInScene --adapter runs/x/checkpoints/step_00000060/adapter --out runs/videos

Episode k starts from reset seed `seed + k` (the eval suite's convention), so videos of different checkpoints
show the same starts. One mp4 per episode, named <task>_seed<S>_ep000.mp4, with the instruction and success
drawn under each frame (envs/video.py); a summary line per episode is printed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

import envs
from envs.video import RecordVideo
from eval.evaluate import load_policy
from scripts.cli import entry_point
from vla.gym_policy import GymPolicy


@dataclass
class Args:
    model: str
    """Base model: a vla preset ("tiny", "small") or a checkpoint directory (e.g. a downloaded openvla-7b)."""
    task: str
    """Task id (python -m envs list)."""
    out: str = "runs/videos"
    """Output directory for the mp4 files."""
    adapter: str | None = None
    """LoRA adapter directory (PEFT format) to attach to the base model."""
    episodes: int = 3
    """Episodes to record."""
    seed: int = 0
    """Reset seed of the first episode."""
    image_size: int = 224
    """Env image size in pixels (the processor resizes to the model's input size)."""
    unnorm_key: str | None = None
    """Action statistics key of the checkpoint (e.g. bridge_orig); None: actions stay normalized in [-1, 1]."""
    n_action_bins: int = 256
    """Action bins of a preset model."""
    sample: bool = False
    """Sample actions at `temperature` instead of taking the most likely bins."""
    temperature: float = 1.0
    """Sampling temperature."""
    frame_stride: int = 1
    """Keep every k-th frame (the last frame of an episode is always kept)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        envs.get_spec(self.task)  # unknown task ids fail here, with close matches


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv)
    policy = load_policy(args.model, args.adapter, n_action_bins=args.n_action_bins, seed=args.seed)
    act = GymPolicy(policy, unnorm_key=args.unnorm_key, do_sample=args.sample, temperature=args.temperature,
                    seed=args.seed)
    env = RecordVideo(envs.make(args.task, image_size=args.image_size), Path(args.out), task_id=args.task,
                      frame_stride=args.frame_stride)
    try:
        for episode in range(args.episodes):
            obs, info = env.reset(seed=args.seed + episode)
            done, steps, success = False, 0, False
            while not done:
                obs, _, terminated, truncated, info = env.step(act(obs))
                done, steps, success = terminated or truncated, steps + 1, success or bool(info["success"])
            print(f"episode {episode} seed {args.seed + episode}: success={success} steps={steps} -> {env.clips[-1]}")
    finally:
        env.close()


if __name__ == "__main__":
    main(sys.argv[1:])
