"""Command line for envs/:

    python -m envs list [--suite S] [--backend B]           the task table
    python -m envs demos --task T --n N --out DIR [...]     generate expert demos (resumes DIR if present)
    python -m envs inspect DIR                              summarize a demo dataset
    python -m envs expert --task T --n N                    measure an expert's success rate (nothing saved)
    python -m envs export-lerobot DIR OUT [--fps F]         write a demo dataset as a LeRobot v3 dataset
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from envs.demos import DemoDataset, evaluate_expert, generate_demos
from envs.formats import export_lerobot
from envs.registry import list_tasks


def _print_table(header: Sequence[str], rows: list[Sequence[object]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_list(args: argparse.Namespace) -> None:
    specs = list_tasks(suite=args.suite, backend=args.backend)
    header = ("id", "suite", "robot", "backend", "horizon", "expert", "instruction")
    rows = [
        (s.task_id, s.suite, s.robot, s.backend, s.max_episode_steps, "yes" if s.expert_factory else "-", s.instruction)
        for s in specs
    ]
    _print_table(header, rows)
    print(f"\n{len(specs)} tasks")


def cmd_demos(args: argparse.Namespace) -> None:
    generate_demos(
        args.task,
        args.n,
        args.out,
        seed=args.seed,
        env_options={"image_size": args.image_size},
        keep_failures=args.keep_failures,
        max_attempts=args.max_attempts,
    )


def cmd_inspect(args: argparse.Namespace) -> None:
    dataset = DemoDataset(args.dir)
    meta, attempts = dataset.meta, dataset.meta["attempts"]
    print(f"{dataset.root}: schema v{meta['schema_version']}, task {meta['task_id']}")
    print(f"backend: {meta['backend']} ({meta['backend_env_id']}), robot: {meta['robot']}")
    print(f"instruction: {meta['instruction']}")
    print(f"env options: {meta['env_options']}, seeds from {meta['seed']}, keep_failures={meta['keep_failures']}")
    successes = sum(attempt["success"] for attempt in attempts)
    print(f"expert: {successes}/{len(attempts)} attempts succeeded ({meta['expert_success_rate'] or 0:.1%})")
    print(f"episodes: {len(dataset)} of {meta['num_requested']} requested, {dataset.num_steps} steps")
    if not len(dataset):
        return
    lengths = [episode["length"] for episode in meta["episodes"]]
    print(f"episode length min/mean/max: {min(lengths)}/{np.mean(lengths):.1f}/{max(lengths)}")
    for key, value in dataset.episode(0).items():
        print(f"  {key:<12} {str(value.dtype):<8} {list(value.shape)}" + (f"  {value}" if value.ndim == 0 else ""))
    actions = dataset.actions()
    print("actions min " + " ".join(f"{v:+.3f}" for v in actions.min(0)))
    print("actions max " + " ".join(f"{v:+.3f}" for v in actions.max(0)))
    if meta.get("action_stats"):
        print("actions q01 " + " ".join(f"{v:+.3f}" for v in meta["action_stats"]["q01"]))
        print("actions q99 " + " ".join(f"{v:+.3f}" for v in meta["action_stats"]["q99"]))


def cmd_expert(args: argparse.Namespace) -> None:
    rate = evaluate_expert(args.task, args.n, seed=args.seed, image_size=args.image_size)
    seeds = f"seeds {args.seed}..{args.seed + args.n - 1}"
    print(f"{args.task}: expert success rate {rate:.1%} over {args.n} episodes ({seeds})")


def cmd_export_lerobot(args: argparse.Namespace) -> None:
    out = export_lerobot(DemoDataset(args.dir), args.out, fps=args.fps, crf=args.crf)
    print(f"{out}: LeRobot v3.0 dataset")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m envs", description="Razor's tasks, demos and datasets.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list the registered tasks")
    p.add_argument("--suite", help="only this suite (e.g. metaworld)")
    p.add_argument("--backend", help="only this backend (e.g. mujoco, maniskill3)")
    p.set_defaults(run=cmd_list)

    p = commands.add_parser("demos", help="generate expert demonstrations into a directory")
    p.add_argument("--task", required=True, help="task id, e.g. metaworld/pick-place")
    p.add_argument("--n", type=int, required=True, help="number of episodes to keep")
    p.add_argument("--out", required=True, help="dataset directory (resumed if it exists)")
    p.add_argument("--seed", type=int, default=0, help="attempt k resets with seed + k")
    p.add_argument("--image-size", type=int, default=224, help="square image size in pixels")
    p.add_argument("--keep-failures", action="store_true", help="also keep episodes where the expert failed")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many rollouts")
    p.set_defaults(run=cmd_demos)

    p = commands.add_parser("inspect", help="summarize a demo dataset")
    p.add_argument("dir", help="dataset directory")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser("expert", help="measure a task's expert success rate")
    p.add_argument("--task", required=True, help="task id")
    p.add_argument("--n", type=int, default=20, help="number of episodes")
    p.add_argument("--seed", type=int, default=0, help="first reset seed")
    p.add_argument("--image-size", type=int, default=64, help="square image size in pixels")
    p.set_defaults(run=cmd_expert)

    p = commands.add_parser("export-lerobot", help="write a demo dataset as a LeRobot v3 dataset (parquet + mp4)")
    p.add_argument("dir", help="demo dataset directory (python -m envs demos ...)")
    p.add_argument("out", help="new directory for the LeRobot dataset")
    p.add_argument("--fps", type=int, default=10, help="frame rate recorded in the dataset and its video")
    p.add_argument("--crf", type=int, default=18, help="h264 quality (0: lossless luma, larger: smaller files)")
    p.set_defaults(run=cmd_export_lerobot)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
