"""The fast generation paths give today's actions: the cached decode loop against a full recompute, merged LoRA
against unmerged LoRA, and sampled log-probs against teacher-forced scoring (tiny preset + adapter, fp32, CPU)."""

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image
from vla_fixtures import random_images

from vla import LoraSettings, VLAPolicy
from vla.config import ACTION_DIM

# Prompts of different lengths, so the batch is left-padded and the decode mask is exercised.
WORDS = ["close the drawer", "pick up the red block and place it on the shelf", "push", "open the window"]


def adapted_policy(lm_head: bool) -> VLAPolicy:
    """The tiny preset with an r=16 adapter whose B factors are random (a fresh adapter is the identity), large
    enough that different observations get different actions."""
    policy = VLAPolicy.from_pretrained("tiny", device="cpu", seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        policy.add_lora(LoraSettings(r=16, alpha=16, lm_head=lm_head))
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=1.0)
    return policy.eval()


def observations(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n Meta-World-sized (64 px) frames and instructions."""
    return random_images(n, 64, 64, seed=seed), [WORDS[i % len(WORDS)] for i in range(n)]


@torch.no_grad()
def recomputed_greedy_tokens(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> torch.Tensor:
    """Greedy action tokens [B, 7] the straightforward way: a full forward over image + prompt + the tokens chosen
    so far for every token (no KV cache), argmax over the action bins of the last position."""
    batch = policy.preprocess(images, instructions)
    vla, input_ids, mask = policy.vla, batch.input_ids, batch.attention_mask
    offset, n_bins = vla.action_token_offset, vla.config.n_action_bins
    for _ in range(ACTION_DIM):
        logits = vla(batch.pixel_values, input_ids, mask).logits[:, -1, offset : offset + n_bins]
        chosen = logits.argmax(-1) + offset
        input_ids = torch.cat([input_ids, chosen[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(chosen), 1)], dim=1)
    return input_ids[:, -ACTION_DIM:]


@pytest.mark.parametrize("lm_head", [False, True])
def test_cached_greedy_decode_matches_a_full_recompute(lm_head):
    policy = adapted_policy(lm_head)
    images, instructions = observations(24)
    with torch.no_grad():
        got = policy.generate(policy.preprocess(images, instructions), do_sample=False).action_tokens
    assert torch.equal(got, recomputed_greedy_tokens(policy, images, instructions))
    assert len({tuple(row) for row in got.tolist()}) > 1  # the observations do lead to different actions


def test_sampled_log_probs_equal_teacher_forced_ones_with_an_adapter_and_padding():
    policy = adapted_policy(lm_head=True)
    images, instructions = observations(8)
    batch = policy.preprocess(images, instructions)
    assert not bool(batch.attention_mask.all())  # left-padded rows
    with torch.no_grad():
        out = policy.generate(batch, do_sample=True, temperature=0.8, generator=torch.Generator().manual_seed(0))
        scores = policy.evaluate_actions(batch, out.action_tokens, temperature=0.8)
    # Decode and teacher forcing add the same numbers in a different order: ~1e-5 on log-probs of size ~5.
    torch.testing.assert_close(out.log_probs, scores.log_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.values, scores.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("lm_head", [False, True])
def test_merged_adapter_gives_identical_greedy_actions(lm_head):
    """Merging changes the arithmetic (x @ (W + s B A)^T instead of x @ W^T + s (x @ A^T) @ B^T), so logits move by
    float rounding (up to ~3e-4 here, on logits of size ~5) and a greedy token may flip where the top two bins tie
    that closely. A flip is allowed only at such a near-tie of the unmerged logits (gap < 1e-3); on these 128
    observations x 7 tokens none occurs, although the smallest top-2 gaps (~1e-5 without, ~6e-4 with LM-head LoRA)
    are within that range."""
    policy = adapted_policy(lm_head)
    images, instructions = observations(128, seed=1)
    batch = policy.preprocess(images, instructions)
    with torch.no_grad():
        unmerged = policy.generate(batch, do_sample=False)
        unmerged_logits = policy.evaluate_actions(batch, unmerged.action_tokens).logits
        policy.merge_adapters()
        merged = policy.generate(batch, do_sample=False)
        merged_logits = policy.evaluate_actions(batch, unmerged.action_tokens).logits
    assert float((merged_logits - unmerged_logits).abs().max()) < 1e-3
    differs = merged.action_tokens != unmerged.action_tokens
    flipped_rows = differs.any(dim=1)
    first_flip = differs.int().argmax(dim=1)[flipped_rows]  # later tokens follow from the first flip
    top2 = unmerged_logits[flipped_rows, first_flip].topk(2, dim=-1).values
    assert bool(((top2[:, 0] - top2[:, 1]) < 1e-3).all()), "a merged adapter changed an action that was no near-tie"
    assert int(flipped_rows.sum()) == 0  # measured: no near-tie flips on this set
    torch.testing.assert_close(merged.log_probs, unmerged.log_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged.values, unmerged.values, atol=1e-4, rtol=0)


def test_batched_torch_resize_stays_within_one_level_of_pil():
    """The processor resizes in torch (one batch); OpenVLA resizes each frame with PIL's bicubic. Same frames in,
    at most one intensity level apart in under 1% of the values; identical when no resize is needed."""
    policy = VLAPolicy.from_pretrained("tiny", device="cpu", seed=0)
    processor, size = policy.processor, policy.vla.config.image_size
    std = processor.std.flatten()[:3, None, None]
    for height, width in [(64, 64), (40, 48), (size, size)]:
        images = random_images(6, height, width, seed=height)
        pil = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in images])
        levels = (processor.pixel_values(list(images))[:, :3] * std * 255).round()  # back to 0..255 minus the mean
        reference = ((torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255 - processor.mean[:, :3]) * 255).round()
        off = (levels - reference).abs()
        assert float(off.max()) <= 1 and float((off > 0).float().mean()) < 0.01
        if (height, width) == (size, size):
            assert float(off.max()) == 0
    mixed = [random_images(1, 64, 64, seed=1)[0], random_images(1, 40, 48, seed=2)[0]]
    one_by_one = torch.cat([processor.pixel_values([image]) for image in mixed])
    assert torch.equal(processor.pixel_values(mixed), one_by_one)


def test_precomputed_patch_embeddings_give_identical_scores_and_gradients():
    """PPO's vision cache: with LoRA on the LM only, scoring with patch embeddings computed once (no grad) gives
    the same log-probs, values and LoRA gradients as running the vision backbone inside the scored forward."""
    policy = adapted_policy(lm_head=True)
    policy.train()
    assert policy.vision_frozen
    images, instructions = observations(6)
    batch = policy.preprocess(images, instructions)
    tokens = torch.randint(0, 256, (6, ACTION_DIM), generator=torch.Generator().manual_seed(0))
    tokens += policy.vla.action_token_offset
    trainable = [p for p in policy.parameters() if p.requires_grad]

    def scored(patch_embeddings):
        policy.zero_grad()
        scores = policy.evaluate_actions(batch, tokens, temperature=0.8, patch_embeddings=patch_embeddings)
        (scores.log_probs.sum() + scores.values.sum() + scores.entropy.sum()).backward()
        return scores, [p.grad.clone() for p in trainable]

    with torch.no_grad():
        patches = policy.patch_embeddings(batch)
    (fresh, fresh_grads), (cached, cached_grads) = scored(None), scored(patches)
    for name in ("log_probs", "values", "entropy", "logits"):
        assert torch.equal(getattr(fresh, name), getattr(cached, name)), name
    assert all(torch.equal(a, b) for a, b in zip(fresh_grads, cached_grads, strict=True))
    assert any(float(g.abs().sum()) > 0 for g in fresh_grads)

    policy.model.get_base_model().projector.fc1.weight.requires_grad_(True)  # a trainable projector: no cache
    assert not policy.vision_frozen
    with pytest.raises(ValueError, match="patches must be"):
        policy.evaluate_actions(batch, tokens, patch_embeddings=patches[:, :3])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("adapter", ["active", "disabled", "merged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_and_decode_steps_equal_the_llama_model_forward_bit_for_bit(padded, adapter, dtype):
    """prefill/decode_step run the decoder layers through vla.modeling.decoder_layer: the same
    operations as LlamaModel.forward with a DynamicCache (Hugging Face's own path, through peft's LoRA layers), so
    hidden states and keys/values are equal, not merely close; with LoRA layers in the LM, with the adapters disabled
    (pi0) and with the adapter merged (plain nn.Linear layers, which the fast path applies with F.linear), with and
    without left padding, in float32 and in bfloat16 (the dtype on a GPU: norms and rotary embeddings round there
    between operators)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    policy = adapted_policy(lm_head=False)
    if adapter == "merged":
        policy.merge_adapters()
    policy.to(dtype)
    assert any(isinstance(m, LoraLinear) for m in policy.vla.modules()) != (adapter == "merged")
    with policy.adapters_disabled() if adapter == "disabled" else contextlib.nullcontext():
        _check_decode_against_llama_model(policy, padded)


def _check_decode_against_llama_model(policy: VLAPolicy, padded: bool) -> None:
    from transformers import DynamicCache

    images, instructions = observations(6)
    if not padded:
        instructions = [WORDS[0]] * len(instructions)
    batch = policy.preprocess(images, instructions)
    assert bool(batch.attention_mask.all()) != padded
    vla, lm = policy.vla, policy.vla.language_model.model
    tokens = torch.randint(0, 256, (6, ACTION_DIM - 1), generator=torch.Generator().manual_seed(0))
    tokens += vla.action_token_offset
    with torch.no_grad():
        hidden, state = vla.prefill(batch.pixel_values, batch.input_ids, batch.attention_mask, ACTION_DIM - 1)
        decoded = [vla.decode_step(tokens[:, k], state) for k in range(ACTION_DIM - 1)]

        mm = vla.embed_multimodal(batch.pixel_values, batch.input_ids, batch.attention_mask)
        mask, position = mm.attention_mask, mm.position_ids[:, -1:]
        out = lm(inputs_embeds=mm.inputs_embeds, attention_mask=mask, position_ids=mm.position_ids,
                 cache=DynamicCache(config=lm.config), use_cache=True)
        expected = [out.last_hidden_state[:, -1]]
        for k in range(ACTION_DIM - 1):
            mask, position = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1), position + 1
            out = lm(inputs_embeds=lm.embed_tokens(tokens[:, k : k + 1]), attention_mask=mask, position_ids=position,
                     cache=out.cache, use_cache=True)
            expected.append(out.last_hidden_state[:, -1])
    for got, want in zip([hidden, *decoded], expected, strict=True):
        assert torch.equal(got, want)
    for i, layer in enumerate(out.cache.layers):
        assert torch.equal(state.cache.keys[i], layer.keys) and torch.equal(state.cache.values[i], layer.values)


def test_the_lm_runs_sdpa_attention_whatever_the_checkpoint_config_asks():
    """decoder_layer calls sdpa with sdpa-style masks; the LM's own forward (teacher forcing, the KL) must use the
    same attention, even when a checkpoint's text_config names another implementation."""
    from vla.config import preset_config
    from vla.modeling import OpenVLA

    config = preset_config("tiny")
    config.text_config["attn_implementation"] = "eager"
    assert OpenVLA.from_config(config).language_model.config._attn_implementation == "sdpa"
