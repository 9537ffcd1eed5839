"""Hard-kill resume and data-parallel equivalence, each in real subprocesses (python / torchrun, CPU, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rollouts import checkpoint
from rollouts.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _train_ppo(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scripts.train_ppo", "tiny", "--run-dir", str(run_dir), "--num-envs", "16",
            "--total-updates", "8", "--checkpoint-every", "1", "--no-progress", *extra]  # fmt: skip


def _comparable(rows: list[dict]) -> list[dict]:
    """Logged values that must repeat exactly (everything but timings)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_resume_after_kill_9_reproduces_step_count_and_losses(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_train_ppo(reference), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_train_ppo(killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and len(read_metrics(killed)) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: some update after the 4th is in progress
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done_before_kill = len(read_metrics(killed))
    assert 4 <= done_before_kill < 8

    resumed = subprocess.run(_train_ppo(killed, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_rows, rows = read_metrics(reference), read_metrics(killed)
    assert [r["update"] for r in rows] == list(range(1, 9))
    for ref, row in zip(_comparable(ref_rows), _comparable(rows)):
        assert row.keys() == ref.keys()
        for key in ref:
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (row["update"], key)
    state = checkpoint.read_trainer_state(checkpoint.latest_checkpoint(killed))
    assert state["counters"] == {"update": 8, "env_steps": 8 * 16, "samples": 8 * 16 * 2}
    assert "done: 8/8 updates" in resumed.stdout


WORKER = textwrap.dedent(
    """
    import json, sys
    from dataclasses import replace
    import torch
    from safetensors.torch import save_file
    import envs
    from rollouts import distributed
    from rollouts.collect import collect
    from rollouts.ppo import ppo_update
    from rollouts.presets import RL_PRESETS
    from rollouts.run import Run

    out = sys.argv[1]
    cfg = replace(RL_PRESETS["ppo"]["tiny"][1], run_dir=out + "/run", num_envs=8, update_epochs=1, num_minibatches=1,
                  kl_coef=0.5, progress=False, total_updates=1)
    run = Run.start(cfg, train_value_head=True, value_learning_rate=cfg.value_learning_rate)
    # Every process collects the same full rollout (seeded); each keeps its shard of the envs.
    vec = envs.make_vec(cfg.task, 8, seed=0, in_process=True)
    rollout = collect(run.policy.eval(), vec, 1, list(range(8)), with_base=True,
                      generator=torch.Generator().manual_seed(5))
    grads = {}
    step = run.optimizer.step

    def step_and_keep_grads(*args, **kwargs):  # the averaged, clipped gradients the optimizer receives
        grads.update({n: p.grad.detach().clone() for n, p in run.policy.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    run.optimizer.step = step_and_keep_grads
    shard = 8 // run.dist.world_size
    mine = rollout.select_envs(slice(run.dist.rank * shard, (run.dist.rank + 1) * shard))
    metrics = ppo_update(run, mine, cfg)
    metrics = distributed.mean(metrics)
    if run.dist.is_main:
        params = {n: p.detach().contiguous() for n, p in run.policy.named_parameters() if p.requires_grad}
        save_file(params, out + "/params.safetensors")
        save_file(grads, out + "/grads.safetensors")
        json.dump(metrics, open(out + "/metrics.json", "w"))
    distributed.shutdown()
    """
)


def test_two_gloo_processes_match_the_single_process_update(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    one = subprocess.run([sys.executable, str(script), str(single)], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), str(double)], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    g1, g2 = load_file(single / "grads.safetensors"), load_file(double / "grads.safetensors")
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-7, msg=name)
    # Parameters after the AdamW step: its first step is ~lr * sign(grad), so gradient entries that are ~0 up to
    # float noise may move by up to 2 * lr in either run; all others agree.
    p1, p2 = load_file(single / "params.safetensors"), load_file(double / "params.safetensors")
    for name in p1:
        close = torch.isclose(p2[name], p1[name], rtol=1e-4, atol=1e-6)
        assert close.float().mean() > 0.999 and (p2[name] - p1[name]).abs().max() <= 2 * 3e-3, name
    # the update did change the weights (LoRA B matrices start at zero)
    moved = sum(int(p1[n].abs().sum() > 0) for n in p1 if "lora_B" in n)
    assert moved > 0
    m1, m2 = json.loads((single / "metrics.json").read_text()), json.loads((double / "metrics.json").read_text())
    for key in ("losses/pg_loss", "losses/v_loss", "losses/kl_pi0", "losses/approx_kl", "losses/grad_norm",
                "losses/explained_var", "charts/advantage_std"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key


def test_torchrun_training_script_writes_one_checkpoint_and_one_log(tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "scripts.train_ppo", "tiny", "--run-dir",
           str(run_dir), "--num-envs", "16", "--total-updates", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [r["update"] for r in rows] == [1, 2]
    assert rows[-1]["charts/env_steps"] == 2 * 16  # counted over both ranks
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_00000001", "step_00000002"]
    state = checkpoint.read_trainer_state(checkpoint.latest_checkpoint(run_dir))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert proc.stdout.count("done: 2/2 updates") == 1
