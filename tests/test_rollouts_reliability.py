"""Failures a new user meets, each reproduced: a failed start must not block the corrected rerun, a corrupt latest
checkpoint falls back to the previous one on --resume, an unwritable run directory is a clear error, the
minibatch message counts the real samples, and TensorBoard gets no duplicate points after a resume."""

from __future__ import annotations

import os
import shutil

import pytest

from rollouts import checkpoint, ppo
from rollouts.config import ConfigError
from rollouts.constants import ADAPTER_DIR
from rollouts.logger import read_metrics
from vla.policy import ADAPTER_WEIGHTS_FILE


def _cfg(run_dir, **overrides) -> ppo.PPOConfig:
    kwargs = dict(model="tiny", n_action_bins=8, task="toy/color-side", env_in_process=True, num_envs=8,
                  num_steps=1, update_epochs=1, num_minibatches=1, total_updates=2, lora_rank=4, progress=False,
                  torch_threads=1, run_dir=str(run_dir))  # fmt: skip
    return ppo.PPOConfig(**{**kwargs, **overrides})


def _truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def test_failed_start_does_not_block_the_corrected_rerun(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TypeError, match="image_sise"):  # the typo reaches the env's constructor
        ppo.train(_cfg(run_dir, env_kwargs={"image_sise": 64}))
    assert (run_dir / "config.json").exists()  # it got as far as claiming the directory
    out = ppo.train(_cfg(run_dir))  # corrected, without --resume
    assert out["update"] == 2 and [r["update"] for r in read_metrics(run_dir)] == [1, 2]
    with pytest.raises(ConfigError, match="already holds a run"):  # a run that really started is still protected
        ppo.train(_cfg(run_dir, seed=5))

    with pytest.raises(TypeError):
        ppo.train(_cfg(tmp_path / "again", env_kwargs={"image_sise": 64}))
    assert ppo.train(_cfg(tmp_path / "again", resume=True))["update"] == 2  # corrected, with --resume


def test_corrupt_latest_adapter_falls_back_to_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    ppo.train(_cfg(run_dir, total_updates=3))
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_00000002", "step_00000003"]
    _truncate(checkpoint.latest_checkpoint(run_dir) / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE)
    with pytest.warns(UserWarning, match=r"step_00000003.*truncated or corrupt.*previous checkpoint step_00000002"):
        out = ppo.train(_cfg(run_dir, total_updates=3, resume=True))
    assert out["update"] == 3
    assert [r["update"] for r in read_metrics(run_dir)] == [1, 2, 3]  # update 3 redone once, not logged twice
    checkpoint.check_readable(checkpoint.latest_checkpoint(run_dir))  # rewritten whole

    for folder in checkpoint.list_checkpoints(run_dir):
        _truncate(folder / checkpoint.OPTIMIZER_FILE)
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint.*optimizer.safetensors"):
        ppo.train(_cfg(run_dir, total_updates=3, resume=True))


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    regular_file = tmp_path / "file"
    regular_file.write_text("x")
    for bad, reason in [("/proc/razor-x", "No such file"),
                        (regular_file / "run", f"lies under {regular_file}, which is a file"),
                        (regular_file, "is a file, not a directory")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"{bad}.*{reason}"):
            ppo.train(_cfg(bad))
    assert not os.path.exists("/proc/razor-x")
    # a read-only directory: root ignores permission bits, so use the immutable attribute where the system allows it
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    if shutil.which("chattr") and os.system(f"chattr +i {read_only} 2>/dev/null") == 0:
        try:
            for bad in (read_only, read_only / "run"):
                with pytest.raises(ConfigError, match=f"cannot write into --run-dir {bad}: Operation not permitted"):
                    ppo.train(_cfg(bad))
        finally:
            os.system(f"chattr -i {read_only}")


def test_minibatch_message_counts_the_real_samples():
    with pytest.raises(ConfigError, match=r"num_envs=8 x the task's horizon 1 = 8 samples.*num_minibatches=3"):
        ppo.PPOConfig(task="toy/color-side", num_envs=8, num_steps=0, num_minibatches=3)
    with pytest.raises(ConfigError, match=r"num_envs=4 x num_steps=5 = 20 samples"):
        ppo.PPOConfig(task="toy/color-side", num_envs=4, num_steps=5, num_minibatches=3)


def test_tensorboard_has_one_point_per_update_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    ppo.train(_cfg(run_dir, total_updates=3, checkpoint_every=2))
    # as if killed after logging update 3 but before its checkpoint: resume redoes update 3
    shutil.rmtree(run_dir / "checkpoints" / "step_00000003")
    (run_dir / "checkpoints" / "latest").write_text("step_00000002")
    ppo.train(_cfg(run_dir, total_updates=4, checkpoint_every=2, resume=True))
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert [e.step for e in events.Scalars("losses/loss")] == [1, 2, 3, 4]

    # killed before its first checkpoint: the resumed run starts from update 0 and must drop the old points too
    fresh = tmp_path / "fresh"
    ppo.train(_cfg(fresh, total_updates=2, checkpoint_every=5))
    shutil.rmtree(fresh / "checkpoints")
    ppo.train(_cfg(fresh, total_updates=2, checkpoint_every=5, resume=True))
    events = EventAccumulator(str(fresh / "tb")).Reload()
    assert [e.step for e in events.Scalars("losses/loss")] == [1, 2]
