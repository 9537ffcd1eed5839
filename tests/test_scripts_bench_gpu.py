"""scripts/bench_gpu.py's CPU fallback at tiny sizes: every part runs and the JSON has the fields."""

from __future__ import annotations

import json

import torch

from scripts.bench_gpu import BenchGPUConfig, main


def test_bench_gpu_cpu_fallback_writes_every_field(tmp_path):
    threads = torch.get_num_threads()
    try:
        main(BenchGPUConfig(model="tiny", preset="tiny", device="cpu", batch_sizes=(1, 4), repeats=1,
                            naive_observations=2, out=str(tmp_path / "bench.json")))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["device"] == "cpu" and results["measured_on_gpu"] is False
    generate = results["generate"]
    assert set(generate["batched_actions_per_s"]) == set(generate["speedup"]) == {"1", "4"}
    assert generate["naive_actions_per_s"] > 0 and all(v > 0 for v in generate["batched_actions_per_s"].values())
    fwd_bwd = results["evaluate_actions"]
    assert fwd_bwd["micro_batch"] == 64 and fwd_bwd["samples_per_s"] > 0 and fwd_bwd["peak_memory_gb"] > 0
    ppo = results["ppo_update"]
    assert ppo["samples"] == ppo["num_envs"] * ppo["num_steps"] == 64 and ppo["epochs_run"] >= 1
    assert ppo["update_s"] > 0 and ppo["collect_inference_s"] > 0 and ppo["update_peak_memory_gb"] > 0
    assert "needs CUDA" in results["maniskill_gpu"]["skipped"]
