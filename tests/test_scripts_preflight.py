"""scripts/preflight.py on the tiny preset, random-init checkpoints (vla/random_checkpoint.py) and the budget.

The full-size run (`--random-init openvla-7b --preset openvla-7b-a100`) is the slow test at the end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rollouts.budget import GB, micro_batch, peak_bytes, training_memory
from rollouts.presets import RL_PRESETS, SFT_PRESETS
from scripts import preflight
from scripts.preflight import Meter, PreflightConfig, main, policy_steps, preset_configs
from vla.checkpoint import INDEX_FILE
from vla.config import preset_config
from vla.policy import VLAPolicy
from vla.random_checkpoint import RANDOM_INIT_KEY, write_random_checkpoint
from vla.tokenizer import build_tiny_tokenizer

STEPS = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_preflight_tiny_runs_every_step(tmp_path, capsys):
    report = main(PreflightConfig(model="tiny", preset="tiny", json_out=str(tmp_path / "preflight.json")))
    out = capsys.readouterr().out
    assert "all steps passed" in out
    names = [step["name"] for step in report["steps"]]
    assert len(names) == STEPS and [n.split(".")[0] for n in names] == [str(i) for i in range(1, STEPS + 1)]
    assert all(step["seconds"] > 0 and step["peak_rss_gb"] > 0 for step in report["steps"])
    notes = {n.split(".")[0]: step["note"] for n, step in zip(names, report["steps"])}
    assert "identical" in notes["6"]
    assert "kl_forward" in notes["7"] and "1 episode" in notes["8"]
    assert set(report["extrapolated"]) == {"ppo", "grpo", "reinforce", "sft"}
    assert all(t["update_s"] > 0 for t in report["extrapolated"].values())
    assert report["budget"]["fits"]
    assert json.loads((tmp_path / "preflight.json").read_text())["preset"] == "tiny"


def test_preflight_stops_before_loading_when_the_budget_does_not_fit(monkeypatch, capsys):
    monkeypatch.setattr(preflight, "device_memory", lambda device: (0.5 * GB, 0.5 * GB))
    with pytest.raises(SystemExit, match="does not fit"):
        main(PreflightConfig(model="tiny", preset="tiny"))
    assert "-- 1. load" not in capsys.readouterr().out


def test_preflight_stops_when_the_preflight_itself_cannot_fit_now(monkeypatch):
    monkeypatch.setattr(preflight, "device_memory", lambda device: (100 * GB, 0.1 * GB))
    with pytest.raises(SystemExit, match="available now"):
        main(PreflightConfig(model="tiny", preset="tiny"))


def test_backward_reaches_lora_through_gradient_checkpointing(tmp_path):
    """peft + non-reentrant checkpointing: every LoRA B gets a gradient and the decoder layers are recomputed."""
    pcfg = PreflightConfig(model="tiny", preset="tiny")
    cfg = replace(preset_configs("tiny")["ppo"], gradient_checkpointing=True)
    meter = Meter(torch.device("cpu"))
    per_sample = policy_steps(pcfg, cfg, "tiny", preset_config("tiny", cfg.n_action_bins), torch.device("cpu"),
                              tmp_path, meter)  # fmt: skip
    note = meter.results[2].note
    assert "layers recomputed in backward" in note
    ok, total = (int(x) for x in note.split("grads on ")[1].split(" ")[0].split("/"))
    assert ok == total > 0
    assert all(v > 0 for v in per_sample.values())


def test_random_checkpoint_is_sharded_marked_and_loads(tmp_path):
    directory = write_random_checkpoint("tiny", tmp_path / "ck", dtype=torch.float32, max_shard_bytes=2**20)
    index = json.loads((directory / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((directory / s).is_file() for s in shards)
    config = json.loads((directory / "config.json").read_text())
    assert config[RANDOM_INIT_KEY]["preset"] == "tiny" and "RANDOM" in config[RANDOM_INIT_KEY]["note"]
    assert (directory / "tokenizer.json").is_file()
    # The rule: norm weights 1, biases 0, matrices ~ N(0, 0.02), the same values whatever the sharding.
    with safe_open(directory / index["weight_map"]["language_model.model.norm.weight"], "pt") as f:
        assert torch.equal(f.get_tensor("language_model.model.norm.weight"), torch.ones(128))
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    with safe_open(directory / index["weight_map"][name], "pt") as f:
        weight = f.get_tensor(name)
    assert abs(float(weight.std()) - 0.02) < 0.002
    again = write_random_checkpoint("tiny", tmp_path / "ck2", dtype=torch.float32)
    with safe_open(again / "model-00001-of-00001.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor(name), weight)
    policy = VLAPolicy.from_pretrained(directory, device="cpu")
    batch = policy.preprocess(np.zeros((2, 32, 32, 3), np.uint8), ["pick up the cube", "open the drawer"])
    out = policy.generate(batch, do_sample=False, unnorm_key="bridge_orig")  # the identity stand-in statistics
    assert out.actions.shape == (2, 7) and np.abs(out.actions).max() <= 1


def test_standin_tokenizer_has_llamas_vocabulary_size():
    tokenizer = build_tiny_tokenizer(256, base_vocab_size=32000)
    assert tokenizer.vocab_size == 32000 and tokenizer.pad_token_id == 32000
    assert tokenizer.convert_ids_to_tokens([31744, 31999]) == ["<action_0>", "<action_255>"]
    with pytest.raises(ValueError, match="multiple of 64"):
        build_tiny_tokenizer(256, base_vocab_size=32001)


def test_budget_of_the_7b_presets():
    config = preset_config("openvla-7b")
    ppo_cfg = RL_PRESETS["ppo"]["openvla-7b-a100"][1]
    assert micro_batch(ppo_cfg) == 16 == micro_batch(SFT_PRESETS["openvla-7b-a100"][1])
    assert micro_batch(RL_PRESETS["ppo"]["openvla-7b-a100-40gb"][1]) == 8
    rows = {r.component: r.bytes for r in training_memory(ppo_cfg, config, "cuda")}
    assert rows["weights"] == 7_541_237_184 * 2
    assert rows["LoRA weights + grads + AdamW m, v"] == 79_953_920 * 16
    with_ckpt = peak_bytes(training_memory(ppo_cfg, config, "cuda", gradient_checkpointing=True))
    without = peak_bytes(training_memory(ppo_cfg, config, "cuda", gradient_checkpointing=False))
    assert 18 * GB < with_ckpt < 40 * GB < without  # checkpointing is what makes it fit one 40 GB card


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1e6
    return 0.0


@pytest.mark.slow
def test_preflight_random_init_openvla_7b(tmp_path):
    """The full-size 7B architecture (random bf16 weights, 15 GB) through every step on this machine's CPU."""
    if _available_gb() < 18:
        pytest.skip(f"needs ~18 GB of free memory, {_available_gb():.1f} GB available")
    torch.set_num_threads(2)
    report = main(PreflightConfig(random_init="openvla-7b", preset="openvla-7b-a100", generate_batch=1,
                                  micro_batch=1, json_out=str(tmp_path / "preflight-7b.json")))  # fmt: skip
    assert len(report["steps"]) >= STEPS
    assert "layers recomputed in backward" in next(s["note"] for s in report["steps"] if s["name"].startswith("3."))
