"""VLAPolicy: batched generation, teacher-forced scoring, adapters, pi0, the gym wrapper and input errors."""

import numpy as np
import pytest
import torch
from vla_fixtures import INSTRUCTIONS, make_tiny_policy, random_images

from vla import GymPolicy, LoraSettings, PolicyBatch, VLAPolicy, prompt_for
from vla.processor import VLAProcessor
from vla.tokenizer import build_tiny_tokenizer


@pytest.fixture
def tiny_policy() -> VLAPolicy:
    return make_tiny_policy()


def test_prompt_ends_with_the_bare_word_start_token(tiny_policy):
    assert prompt_for("Pick Up The Cube") == "In: What action should the robot take to pick up the cube?\nOut:"
    batch = tiny_policy.preprocess(random_images(3), INSTRUCTIONS)
    tokenizer = tiny_policy.processor.tokenizer
    assert (batch.input_ids[:, -1] == tokenizer.convert_tokens_to_ids("▁")).all()
    first_real = batch.attention_mask.argmax(dim=1)
    assert (batch.input_ids[torch.arange(3), first_real] == tokenizer.bos_token_id).all()
    assert batch.attention_mask[:, 0].tolist() != [1, 1, 1]  # rows of different length are left-padded
    assert batch.pixel_values.shape == (3, 6, 32, 32)


def test_pixels_are_normalized_per_featurizer(tiny_policy):
    white = np.full((1, 32, 32, 3), 255, dtype=np.uint8)
    pixels = tiny_policy.preprocess(white, ["push"]).pixel_values[0, :, 0, 0]
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels[:3], (1 - imagenet_mean) / imagenet_std)
    torch.testing.assert_close(pixels[3:], torch.ones(3))


def test_batched_generation_equals_one_by_one(tiny_policy):
    images = [
        random_images(1, 40, 48, seed=1)[0],
        random_images(1, 32, 32, seed=2)[0],
        random_images(1, 64, 20, seed=3)[0],
    ]
    batched = tiny_policy.generate(tiny_policy.preprocess(images, INSTRUCTIONS), do_sample=False)
    for i in range(3):
        single = tiny_policy.generate(
            tiny_policy.preprocess(images[i : i + 1], INSTRUCTIONS[i : i + 1]), do_sample=False
        )
        assert torch.equal(single.action_tokens, batched.action_tokens[i : i + 1])
        np.testing.assert_array_equal(single.actions, batched.actions[i : i + 1])
        torch.testing.assert_close(single.log_probs, batched.log_probs[i : i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.values, batched.values[i : i + 1], atol=1e-5, rtol=0)


def test_generation_log_probs_equal_teacher_forced_ones(tiny_policy):
    batch = tiny_policy.preprocess(random_images(3), INSTRUCTIONS)
    generator = torch.Generator().manual_seed(0)
    out = tiny_policy.generate(batch, do_sample=True, temperature=0.7, generator=generator)
    scores = tiny_policy.evaluate_actions(batch, out.action_tokens, temperature=0.7)
    torch.testing.assert_close(scores.log_probs, out.log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.values, out.values, atol=1e-5, rtol=0)
    assert scores.logits.shape == (3, 7, 256) and scores.entropy.shape == (3, 7)
    assert (scores.entropy > 0).all() and (scores.entropy <= np.log(256) + 1e-4).all()
    assert scores.log_probs.requires_grad and scores.values.requires_grad


def test_sampling_is_restricted_to_action_tokens_and_reproducible(tiny_policy):
    batch = tiny_policy.preprocess(random_images(3), INSTRUCTIONS)
    first = tiny_policy.generate(batch, temperature=2.0, generator=torch.Generator().manual_seed(3))
    again = tiny_policy.generate(batch, temperature=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.action_tokens, again.action_tokens)
    offset = tiny_policy.vla.action_token_offset
    assert (first.action_tokens >= offset).all() and (first.action_tokens < offset + 256).all()
    assert first.actions.dtype == np.float32 and first.actions.shape == (3, 7)
    assert np.abs(first.actions).max() <= 1.0


def test_unnorm_key_unnormalizes_and_unknown_keys_are_listed(tiny_policy):
    batch = tiny_policy.preprocess(random_images(2), INSTRUCTIONS[:2])
    normalized = tiny_policy.generate(batch, do_sample=False)
    raw = tiny_policy.generate(batch, do_sample=False, unnorm_key="bridge_orig")
    expected = tiny_policy.action_stats("bridge_orig").unnormalize(
        tiny_policy.action_tokenizer.decode(raw.action_tokens)
    )
    np.testing.assert_array_equal(raw.actions, expected)
    np.testing.assert_array_equal(raw.actions[:, 6], normalized.actions[:, 6])  # gripper unchanged
    with pytest.raises(KeyError, match=r"\['bridge_orig', 'fractal'\]"):
        tiny_policy.generate(batch, unnorm_key="libero_spatial")


def action_loss(policy: VLAPolicy, batch: PolicyBatch, tokens: torch.Tensor) -> torch.Tensor:
    return -policy.evaluate_actions(batch, tokens).log_probs.mean()


def test_lora_steps_lower_the_loss_and_pi0_stays_the_base_model(tiny_policy):
    batch = tiny_policy.preprocess(random_images(2), INSTRUCTIONS[:2])
    targets = torch.as_tensor(tiny_policy.action_tokenizer.encode(np.tile(np.linspace(-0.9, 0.9, 7), (2, 1))))
    with torch.no_grad():
        base_logits = tiny_policy.evaluate_actions(batch, targets).logits
    with tiny_policy.adapters_disabled():  # no adapters yet: a no-op
        torch.testing.assert_close(tiny_policy.base_action_logits(batch, targets), base_logits, atol=0, rtol=0)

    tiny_policy.add_lora(LoraSettings(r=8, alpha=16))
    trainable = [p for p in tiny_policy.parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("value_head") for n, p in tiny_policy.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    initial = action_loss(tiny_policy, batch, targets).item()
    for _ in range(5):
        optimizer.zero_grad()
        action_loss(tiny_policy, batch, targets).backward()
        optimizer.step()
    assert action_loss(tiny_policy, batch, targets).item() < initial - 0.1

    adapted = tiny_policy.evaluate_actions(batch, targets).logits.detach()
    assert (adapted - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(tiny_policy.base_action_logits(batch, targets), base_logits, atol=1e-5, rtol=0)
    with tiny_policy.adapters_disabled():
        torch.testing.assert_close(tiny_policy.evaluate_actions(batch, targets).logits, base_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_policy.evaluate_actions(batch, targets).logits, adapted)  # re-enabled


def test_adapters_save_load_and_merge(tiny_policy, tmp_path):
    batch = tiny_policy.preprocess(random_images(2), INSTRUCTIONS[:2])
    tiny_policy.save_pretrained(tmp_path / "base")
    tiny_policy.add_lora(LoraSettings(r=4, alpha=8, projector=True))
    with torch.no_grad():
        for name, parameter in tiny_policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    expected = tiny_policy.generate(batch, do_sample=False)
    tiny_policy.save_adapters(tmp_path / "adapters")
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "norm_stats.json"} <= {
        p.name for p in (tmp_path / "adapters").iterdir()
    }

    reloaded = VLAPolicy.from_pretrained(tmp_path / "base", device="cpu", adapter_dir=tmp_path / "adapters")
    got = reloaded.generate(batch, do_sample=False)
    assert torch.equal(got.action_tokens, expected.action_tokens)
    torch.testing.assert_close(got.log_probs, expected.log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.values, expected.values)

    reloaded.merge_adapters()
    merged = reloaded.generate(batch, do_sample=False)
    assert torch.equal(merged.action_tokens, expected.action_tokens)
    torch.testing.assert_close(merged.log_probs, expected.log_probs, atol=1e-4, rtol=0)


def test_policy_batches_index_and_concatenate(tiny_policy):
    images = random_images(3)
    full = tiny_policy.preprocess(images, INSTRUCTIONS)
    parts = PolicyBatch.concat(
        [tiny_policy.preprocess(images[:1], INSTRUCTIONS[:1]), tiny_policy.preprocess(images[1:], INSTRUCTIONS[1:])]
    )
    assert torch.equal(
        tiny_policy.generate(parts, do_sample=False).action_tokens,
        tiny_policy.generate(full, do_sample=False).action_tokens,
    )
    assert len(full[1]) == 1 and len(full[torch.tensor([0, 2])]) == 2


def test_gym_policy_single_and_batched_observations(tiny_policy):
    gym_policy = GymPolicy(tiny_policy, unnorm_key="bridge_orig")
    images = random_images(2)
    single = gym_policy({"image": images[0], "instruction": "push"})
    assert single.shape == (7,) and single.dtype == np.float32
    batched = gym_policy({"image": images, "instruction": ("push", "open the drawer")})
    assert batched.shape == (2, 7)
    np.testing.assert_array_equal(batched[0], single)
    with pytest.raises(KeyError, match="instruction"):
        gym_policy({"image": images[0]})


def test_bad_inputs_raise_clear_errors(tiny_policy, tmp_path):
    images = random_images(2)
    with pytest.raises(TypeError, match="uint8"):
        tiny_policy.preprocess(images.astype(np.float32) / 255, INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match=r"RGB \[H, W, 3\]"):
        tiny_policy.preprocess(images[..., :1], INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        tiny_policy.preprocess(images[0], ["push"])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_policy.preprocess(images, ["push", "  "])
    with pytest.raises(TypeError, match="single str"):
        tiny_policy.preprocess(images[:1], "push")
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        tiny_policy.preprocess(images, ["push"])
    batch = tiny_policy.preprocess(images, INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match="NaN"):
        tiny_policy.generate(PolicyBatch(batch.pixel_values * np.nan, batch.input_ids, batch.attention_mask))
    with pytest.raises(ValueError, match=r"\[2, 7\]"):
        tiny_policy.evaluate_actions(batch, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="action-token ids"):
        tiny_policy.evaluate_actions(batch, torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        tiny_policy.generate(batch, temperature=0.0)
    with pytest.raises(ValueError, match="openvla-7b needs its checkpoint"):
        VLAPolicy.from_pretrained("openvla-7b")
    tiny_policy.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="n_action_bins=256, but n_action_bins=32"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", n_action_bins=32)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a preset"):
        VLAPolicy.from_pretrained("no/such/dir")
    with pytest.raises(ValueError, match="use the checkpoint's own tokenizer"):
        VLAPolicy(tiny_policy.vla, VLAProcessor(build_tiny_tokenizer(32), tiny_policy.vla.config))
