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
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("x") for row in rows)
