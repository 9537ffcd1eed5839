"""Smoke run of scripts/bench_vla.py on the tiny preset."""

import torch

from scripts.bench_vla import BenchConfig, main


def test_bench_vla_smoke(capsys):
    threads = torch.get_num_threads()
    try:
        main(BenchConfig(preset="tiny", batch_sizes=(1, 2), repeats=1, image_size=32, skip_7b=True))
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    # batch | generate, previous decode, ratio, naive, ratio | LoRA unmerged, merged, ratio | PIL, torch, ratio
    # | all previous, all new, ratio
    numbers = [[cell for cell in row if cell != "|"] for row in rows]
    assert all(len(row) == 15 and all(float(cell.removesuffix("x")) > 0 for cell in row) for row in numbers)
