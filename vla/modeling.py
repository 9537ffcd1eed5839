"""OpenVLA's Prismatic architecture, natively on timm + transformers (no remote code).

    pixel_values [B, 6, S, S] --(DINOv2 | SigLIP, 2nd-to-last block, prefix tokens dropped, no final norm)-->
    patch features [B, P, 1024 + 1152] --(fc1, GELU, fc2, GELU, fc3)--> patch embeddings [B, P, 4096]
    LM input: <s>, patch embeddings, prompt tokens --> LlamaForCausalLM over a 32064-token vocabulary.

Parameter names match the openvla/openvla-7b safetensors exactly (`vision_backbone.featurizer.*`,
`vision_backbone.fused_featurizer.*`, `projector.fc1/fc2/fc3.*`, `language_model.*`), including LayerScale's
`scale_factor`. The last ViT blocks, SigLIP's `attn_pool.*` and the final ViT norms are stored but unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import LlamaForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm
from transformers.modeling_outputs import CausalLMOutputWithPast

from vla.checkpoint import MissingCheckpointError, atomic_directory, load_into, read_weight_map, save_sharded
from vla.config import OpenVLAConfig

IGNORE_INDEX = -100  # label of positions that do not count in the LM loss (patches, prompt)
CONFIG_FILE = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the checkpoint's dtype), fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class CheckpointLayerScale(nn.Module):
    """timm's LayerScale with its parameter named `scale_factor`, the name OpenVLA's checkpoint uses.

    (OpenVLA renamed `gamma` because older transformers loaders rewrote parameter names containing "gamma".)
    """

    def __init__(self, scale: nn.Parameter) -> None:
        super().__init__()
        self.scale_factor = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def create_featurizer(timm_model_id: str, image_size: int, overrides: dict) -> VisionTransformer:
    """A randomly initialized timm ViT (no classifier head) with checkpoint-named LayerScales."""
    vit = timm.create_model(timm_model_id, pretrained=False, num_classes=0, img_size=image_size, **overrides)
    if len(vit.blocks) < 2:
        raise ValueError(f"{timm_model_id} needs depth >= 2: features come from the second-to-last block")
    for block in vit.blocks:
        for name in ("ls1", "ls2"):
            layer_scale = getattr(block, name)
            if isinstance(layer_scale, LayerScale):
                setattr(block, name, CheckpointLayerScale(layer_scale.gamma))
    return vit


class FusedVisionBackbone(nn.Module):
    """DINOv2 (`featurizer`) and SigLIP (`fused_featurizer`) patch features, concatenated along channels."""

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__()
        ids, sizes, overrides = config.timm_model_ids, config.image_sizes, config.vision_overrides
        self.featurizer = create_featurizer(ids[0], sizes[0], overrides[0])
        self.fused_featurizer = create_featurizer(ids[1], sizes[1], overrides[1])
        if self.featurizer.patch_embed.num_patches != self.fused_featurizer.patch_embed.num_patches:
            raise ValueError("both featurizers must produce the same number of patches (same image and patch size)")
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.num_patches = self.featurizer.patch_embed.num_patches

    @staticmethod
    def _second_to_last_block_patches(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
        # Prefix (class/register) tokens dropped, no final norm; stop_early skips the unused last block.
        (features,) = vit.forward_intermediates(
            images,
            indices=[len(vit.blocks) - 2],
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 6, S, S] (DINOv2-normalized RGB, SigLIP-normalized RGB) -> [B, P, C_dino + C_siglip]."""
        dino_images, siglip_images = pixel_values.split([3, 3], dim=1)
        return torch.cat(
            [
                self._second_to_last_block_patches(self.featurizer, dino_images),
                self._second_to_last_block_patches(self.fused_featurizer, siglip_images),
            ],
            dim=2,
        )


class FusedProjector(nn.Module):
    """Prismatic's "fused GELU MLP": vision_dim -> 4 * vision_dim -> llm_dim -> llm_dim."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """[B, P, vision_dim] -> [B, P, llm_dim]."""
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(patch_features)))))


@dataclass
class MultimodalInputs:
    """The LM's input after inserting the patch embeddings right after each row's BOS; T = L + P."""

    inputs_embeds: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor  # [B, T], 0 on padding
    position_ids: torch.Tensor  # [B, T], counting attended tokens only (correct under left padding)
    insert_index: torch.Tensor  # [B, T], source of each position in cat([prompt (L), patches (P)])


class PreallocatedKVCache:
    """The LM's keys and values for one generation, in buffers allocated once: [B, H_kv, T + steps, Dh] per layer.

    `update` writes the keys/values of the positions after the `length` filled so far in place and returns views of
    everything up to them: what a DynamicCache would return, without its per-step torch.cat reallocation.
    """

    def __init__(self, layers: int, like: torch.Tensor, heads: int, positions: int, head_dim: int) -> None:
        batch = like.shape[0]
        self.keys = [like.new_empty(batch, heads, positions, head_dim) for _ in range(layers)]
        self.values = [like.new_empty(batch, heads, positions, head_dim) for _ in range(layers)]
        self.length = 0  # positions filled so far (by earlier forward passes)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states, value_states [B, H_kv, n, Dh] of the next n positions -> all keys, values so far."""
        end = self.length + key_states.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key_states
        self.values[layer_idx][:, :, self.length : end] = value_states
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`; a plain nn.Linear without hooks is applied with F.linear directly (what its forward does), LoRA
    layers and hooked modules through their forward. A small model's single-token step is mostly per-call overhead."""
    if type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks):
        return F.linear(x, module.weight, module.bias)
    return module(x)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP.forward, down(act(gate(x)) * up(x)), through `_linear`."""
    return _linear(mlp.down_proj, mlp.act_fn(_linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x))


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm.forward's operations (statistics in float32, the weight applied in the input's dtype) without
    its module call and dtype round trips, which cost a small model's step more than the arithmetic."""
    if type(norm) is not LlamaRMSNorm:
        return norm(x)
    x32 = x.float()
    inverse_rms = x32.pow(2).mean(-1, keepdim=True).add_(norm.variance_epsilon).rsqrt_()
    return norm.weight * (x32 * inverse_rms).to(x.dtype)


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with the first half of the last axis negated, for `_rotate`."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding, x * cos + rotate_half(x) * sin, as x * cos + roll(x) * signed_sin: rotate_half(x) is
    roll(x) with its first half negated, and moving that sign onto sin gives the same products (negation is exact),
    in fewer operators."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def decoder_layer(
    layer: LlamaDecoderLayer,
    hidden: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    cache: PreallocatedKVCache,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """One Llama decoder layer over hidden [B, n, D] with sdpa attention: LlamaDecoderLayer.forward's operations on
    its own modules (LoRA layers included), without its per-call wrappers, kwargs and attention dispatch, which cost
    more than the arithmetic for a small model. `mask`: [B, 1, n, T] bool (True: attend), or None for plain causal
    attention; `rotary`: (cos, `_signed_sin`) [B, 1, n, Dh] of the n positions. Grouped key/value heads (none in
    OpenVLA's Llama 2) go through sdpa's enable_gqa, equal to HF's single-query path up to float rounding. No attention
    dropout: this path only generates (OpenVLA's Llama has attention_dropout 0 anyway)."""
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    x = _rms_norm(layer.input_layernorm, hidden)
    query, key, value = (
        _linear(proj, x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    query, key = _rotate(query, *rotary), _rotate(key, *rotary)
    key, value = cache.update(key, value, attn.layer_idx)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=attn.scaling, is_causal=mask is None and length > 1,
        enable_gqa=attn.num_key_value_groups > 1,
    )
    hidden = hidden + _linear(attn.o_proj, out.transpose(1, 2).reshape(batch, length, -1))
    return hidden + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, hidden))


@dataclass
class DecodeState:
    """What the cached decode steps need, built once by `prefill` for all of them."""

    cache: PreallocatedKVCache
    attention_mask: torch.Tensor | None  # [B, 1, 1, T + steps] bool (True: attend), None without padding
    cos: torch.Tensor  # [B, 1, steps, Dh] rotary embedding of each decode step's position
    signed_sin: torch.Tensor  # [B, 1, steps, Dh]: `_signed_sin` of its sin
    step: int = 0  # decode steps done


class OpenVLA(nn.Module):
    """OpenVLA-7B (or a preset of the same classes): vision backbone, projector and Llama LM.

    Action tokens are the last `n_action_bins` ids of the base vocabulary: ids
    [base_vocab_size - n_action_bins, base_vocab_size), i.e. 31744..31999 for OpenVLA-7B.
    """

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_backbone = FusedVisionBackbone(config)
        llama_config = config.llama_config()
        self.projector = FusedProjector(self.vision_backbone.embed_dim, llama_config.hidden_size)
        self.language_model = LlamaForCausalLM(llama_config)

    # --- construction, loading, saving ---

    @classmethod
    def from_config(
        cls, config: OpenVLAConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> OpenVLA:
        """Randomly initialized model; on `device="meta"` no parameter memory is allocated (shapes only)."""
        device = torch.device(device)
        if device.type == "meta":
            with init_empty_weights():
                return cls(config)
        model = cls(config)
        return model.to(device=device, dtype=dtype or default_dtype(device))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> OpenVLA:
        """Load a local OpenVLA checkpoint (config.json + safetensors shards) without ever holding two copies.

        The model is built on the meta device and each tensor is assigned straight from its shard. `device`
        defaults to CUDA when available; `dtype` defaults to bf16 on CUDA and fp32 on CPU.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingCheckpointError(f"checkpoint directory {directory} does not exist")
        if not (directory / CONFIG_FILE).is_file():
            raise MissingCheckpointError(f"{directory} has no {CONFIG_FILE}: is it an OpenVLA checkpoint directory?")
        config = OpenVLAConfig.load(directory / CONFIG_FILE)
        weight_map = read_weight_map(directory)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = cls.from_config(config, device="meta")
        load_into(model, directory, weight_map, device, dtype or default_dtype(device))
        # Non-persistent buffers (rotary frequencies) were built for real on the CPU; move them along.
        return model.to(device).eval()

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        """Write config.json + safetensors shards + index atomically (the same format `from_pretrained` reads)."""
        with atomic_directory(directory) as tmp:
            self.write_checkpoint_files(tmp, max_shard_bytes)

    def write_checkpoint_files(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        """Write the checkpoint files into an existing directory (`save_pretrained` without the atomic rename)."""
        state_dict = self.state_dict()
        if any("lora_" in name for name in state_dict):
            raise ValueError(
                "the model has LoRA adapters attached: merge them first (VLAPolicy.merge_adapters()) "
                "or save only the adapters (VLAPolicy.save_adapters())"
            )
        dtype_name = str(next(iter(state_dict.values())).dtype).removeprefix("torch.")
        self.config.save(directory / CONFIG_FILE, dtype_name)
        save_sharded(state_dict, directory, max_shard_bytes)

    # --- forward passes ---

    @property
    def num_patches(self) -> int:
        return self.vision_backbone.num_patches

    @property
    def action_token_offset(self) -> int:
        """Vocabulary id of action bin 0 (the highest action value): base_vocab_size - n_action_bins."""
        return self.config.base_vocab_size - self.config.n_action_bins

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images [B, 6, S, S] -> projected patch embeddings [B, P, D] (the LM's input for the image)."""
        return self.projector(self.vision_backbone(pixel_values))

    def embed_multimodal(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
    ) -> MultimodalInputs:
        """Embed prompts [B, L] and images [B, 6, S, S], inserting the P patch embeddings after each row's BOS.

        BOS is the first attended token of a row, so left-padded rows keep their padding in front. `patches`
        [B, P, D]: the images' `patch_embeddings` computed before, used instead of `pixel_values`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{pixel_values.shape[0]} images but {input_ids.shape[0]} prompts; pass one image per prompt"
            )
        if patches is None:
            patches = self.patch_embeddings(pixel_values)  # [B, P, D]
        elif patches.shape[:2] != (input_ids.shape[0], self.num_patches):
            expected = f"[{input_ids.shape[0]}, {self.num_patches}, D]"
            raise ValueError(f"patches must be {expected}, got {list(patches.shape)}")
        tokens = self.language_model.get_input_embeddings()(input_ids)  # [B, L, D]
        batch, length = input_ids.shape
        n_patches = patches.shape[1]
        bos_index = attention_mask.long().argmax(dim=1, keepdim=True)  # [B, 1]
        position = torch.arange(length + n_patches, device=input_ids.device).expand(batch, -1)  # [B, T]
        is_patch = (position > bos_index) & (position <= bos_index + n_patches)
        # Index into cat([tokens, patches]): tokens before/at BOS keep their index, later ones shift by P.
        insert_index = torch.where(
            is_patch,
            length + position - bos_index - 1,
            torch.where(position <= bos_index, position, position - n_patches),
        )
        embeds = torch.cat([tokens, patches.to(tokens.dtype)], dim=1)
        embeds = embeds.gather(1, insert_index.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, n_patches)], dim=1).gather(1, insert_index)
        return MultimodalInputs(embeds, mask, (mask.long().cumsum(1) - 1).clamp(min=0), insert_index)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Full-vocabulary logits [B, L + P, V] like OpenVLA's forward; `labels` [B, L] give the LM loss
        (use IGNORE_INDEX for positions that do not count; patch positions never count)."""
        mm = self.embed_multimodal(pixel_values, input_ids, attention_mask)
        mm_labels = None
        if labels is not None:
            ignored = labels.new_full((labels.shape[0], self.num_patches), IGNORE_INDEX)
            mm_labels = torch.cat([labels, ignored], dim=1).gather(1, mm.insert_index)
        return self.language_model(
            inputs_embeds=mm.inputs_embeds,
            attention_mask=mm.attention_mask,
            position_ids=mm.position_ids,
            labels=mm_labels,
            use_cache=False,
        )

    def prefill(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, DecodeState]:
        """One pass over images + left-padded prompts; returns the last prompt token's hidden state [B, D]
        and the state for `steps` calls of `decode_step` (KV buffers, attention mask and rotary embeddings of
        all steps, built here so the decode loop allocates no cache and never syncs with the host).

        The LM's decoder layers are run by `decoder_layer`, with the attention mask LlamaModel.forward would build:
        the same arithmetic, op for op (tests compare the hidden states and keys/values bit for bit)."""
        mm = self.embed_multimodal(pixel_values, input_ids, attention_mask)
        lm = self.language_model.model
        batch, length, _ = mm.inputs_embeds.shape
        step_positions = mm.position_ids[:, -1:] + torch.arange(1, steps + 1, device=input_ids.device)
        positions = torch.cat([mm.position_ids, step_positions], dim=1)
        cos, sin = lm.rotary_emb(mm.inputs_embeds, positions)  # [B, T + steps, Dh]
        cos, signed_sin = cos[:, None], _signed_sin(sin)[:, None]  # [B, 1, T + steps, Dh]: broadcast over the heads
        # None when no row is padded (causal attention), else [B, 1, T, T] bool with each row's padding masked out.
        mask = create_causal_mask(
            config=lm.config, inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask, cache=None,
            position_ids=mm.position_ids,
        )
        layers = lm.layers[: lm.config.num_hidden_layers]
        attn = layers[0].self_attn
        cache = PreallocatedKVCache(
            len(layers), mm.inputs_embeds, lm.config.num_key_value_heads, length + steps, attn.head_dim
        )
        hidden = mm.inputs_embeds
        for layer in layers:
            hidden = decoder_layer(layer, hidden, (cos[:, :, :length], signed_sin[:, :, :length]), cache, mask)
        cache.length = length
        step_mask = None
        if mask is not None:
            full = torch.cat([mm.attention_mask, mm.attention_mask.new_ones(batch, steps)], dim=1)
            step_mask = full.bool()[:, None, None, :]
        state = DecodeState(cache, step_mask, cos[:, :, length:], signed_sin[:, :, length:])
        return _rms_norm(lm.norm, hidden[:, -1]), state

    def decode_step(self, token_ids: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed one token per row [B] through the KV cache (updating `state`); returns its hidden state [B, D]."""
        lm = self.language_model.model
        hidden = lm.embed_tokens(token_ids[:, None])  # [B, 1, D]
        step = state.step
        rotary = (state.cos[:, :, step : step + 1], state.signed_sin[:, :, step : step + 1])
        end = state.cache.length + 1
        mask = state.attention_mask[..., :end] if state.attention_mask is not None else None
        for layer in lm.layers[: lm.config.num_hidden_layers]:
            hidden = decoder_layer(layer, hidden, rotary, state.cache, mask)
        state.cache.length, state.step = end, step + 1
        return _rms_norm(lm.norm, hidden[:, -1])

    def action_hidden_states(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        action_tokens: torch.Tensor,
        patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced hidden states [B, A, D] that predict each of the A action tokens [B, A]:
        the last prompt token's, then those of action tokens 1..A-1. Prompts must be left-padded.
        `patches`: precomputed `patch_embeddings(pixel_values)` [B, P, D], if any."""
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("prompts must be left-padded (every row's last token attended); use VLAPolicy.preprocess")
        mm = self.embed_multimodal(pixel_values, input_ids, attention_mask, patches)
        n_actions = action_tokens.shape[1]
        action_embeds = self.language_model.get_input_embeddings()(action_tokens[:, :-1])
        steps = torch.arange(1, n_actions, device=input_ids.device)
        out = self.language_model.model(
            inputs_embeds=torch.cat([mm.inputs_embeds, action_embeds], dim=1),
            attention_mask=torch.cat([mm.attention_mask, mm.attention_mask.new_ones(len(input_ids), n_actions - 1)], 1),
            position_ids=torch.cat([mm.position_ids, mm.position_ids[:, -1:] + steps], dim=1),
            use_cache=False,
        )
        return out.last_hidden_state[:, -n_actions:]

    def action_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM-head logits restricted to the action tokens: [..., D] -> [..., n_action_bins] (bin j = token
        action_token_offset + j)."""
        logits = self.language_model.lm_head(hidden_states)
        return logits[..., self.action_token_offset : self.action_token_offset + self.config.n_action_bins]
