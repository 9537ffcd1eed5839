"""VLAPolicy: the action-level interface that rollouts/ (PPO, GRPO, REINFORCE, SFT) and eval/ use.

    policy = VLAPolicy.from_pretrained("tiny")                     # or a checkpoint dir; or VLAPolicy(model, processor)
    batch = policy.preprocess(images, instructions)                # PolicyBatch on policy.device
    out = policy.generate(batch, do_sample=True, temperature=1.0)  # no grad: actions, tokens, log-probs, values
    scores = policy.evaluate_actions(batch, out.action_tokens)     # with grad: log-probs, entropy, values, logits
    with policy.adapters_disabled():                               # pi0: the base model, same weights, LoRA off
        ...
    base_logits = policy.base_action_logits(batch, out.action_tokens)

A distribution is always over the `n_action_bins` action tokens only (bin j = vocabulary id
`model.action_token_offset + j`), at the given temperature. The value head is a small MLP on the LM's last hidden
state at the last prompt token (the position that predicts the first action token); it trains with the adapters
and is saved next to them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer

from vla.actions import ActionStats, ActionTokenizer
from vla.checkpoint import MissingCheckpointError, atomic_directory, check_safetensors, read_safetensors
from vla.config import ACTION_DIM, PRESET_NAMES, preset_config
from vla.lora import LoraSettings, add_lora
from vla.modeling import OpenVLA, default_dtype
from vla.processor import PolicyBatch, VLAProcessor
from vla.tokenizer import build_tiny_tokenizer

VALUE_HEAD_FILE = "value_head.safetensors"
NORM_STATS_FILE = "norm_stats.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class ActionOutput:
    """Result of `VLAPolicy.generate` for B observations."""

    actions: np.ndarray  # [B, 7] float32: un-normalized with `unnorm_key`, else normalized to [-1, 1]
    action_tokens: torch.Tensor  # [B, 7] long vocabulary ids
    log_probs: torch.Tensor  # [B, 7] log-probability of each token over the action bins, at the temperature
    values: torch.Tensor  # [B] value-head estimate at the last prompt token


@dataclass
class ActionScores:
    """Result of `VLAPolicy.evaluate_actions` (carries gradients)."""

    log_probs: torch.Tensor  # [B, 7] at the temperature
    entropy: torch.Tensor  # [B, 7] of the per-token distribution over the action bins, at the temperature
    values: torch.Tensor  # [B]
    logits: torch.Tensor  # [B, 7, n_action_bins] raw (temperature 1) action-bin logits, float32


class ValueHead(nn.Module):
    """hidden [..., D] -> value [...]: Linear(D, H), tanh, Linear(H, 1); kept in float32."""

    def __init__(self, hidden_size: int, mlp_size: int = 512) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_size), nn.Tanh(), nn.Linear(mlp_size, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden.float()).squeeze(-1)


class VLAPolicy(nn.Module):
    """An OpenVLA model (optionally with LoRA adapters), its processor and a value head."""

    def __init__(
        self, model: OpenVLA | PeftModel, processor: VLAProcessor, value_head: ValueHead | None = None
    ) -> None:
        super().__init__()
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        tokenizer_vocab = processor.tokenizer.vocab_size
        if tokenizer_vocab != base.config.base_vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer_vocab} base tokens but the model expects {base.config.base_vocab_size} "
                "(text_config.vocab_size - pad_to_multiple_of); use the checkpoint's own tokenizer"
            )
        self.model = model
        self.processor = processor
        hidden_size = base.language_model.config.hidden_size
        self.value_head = value_head or ValueHead(hidden_size)
        self.value_head.to(next(base.parameters()).device)
        self.action_tokenizer = ActionTokenizer(base.config.base_vocab_size, base.config.n_action_bins)

    # --- construction and persistence ---

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        adapter_dir: str | Path | None = None,
        seed: int = 0,
        n_action_bins: int | None = None,
    ) -> VLAPolicy:
        """Load a checkpoint directory, or build the random-init preset `tiny` / `small` (seeded by `seed`,
        with `n_action_bins` bins, default 256). For a directory, `n_action_bins` (if given) must match its
        config. `adapter_dir` attaches saved LoRA adapters (trainable) and value head.

        device: default CUDA when available, else CPU; dtype: default bf16 on CUDA, fp32 on CPU.
        A `value_head.safetensors` in the directory is loaded too.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or default_dtype(device)
        path = Path(source)
        if str(source) == "openvla-7b" and not path.is_dir():
            raise MissingCheckpointError(
                "openvla-7b needs its checkpoint (weights and Llama tokenizer): pass the directory of the "
                "downloaded openvla/openvla-7b instead of the preset name"
            )
        if not path.is_dir() and str(source) not in PRESET_NAMES:
            raise MissingCheckpointError(
                f"{source!r} is neither a checkpoint directory nor a preset (presets: tiny, small; openvla-7b needs "
                "its checkpoint directory)"
            )
        # Random initialization (preset weights, a new value head) is seeded without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if path.is_dir():
                model = OpenVLA.from_pretrained(path, device, dtype)
                if n_action_bins not in (None, model.config.n_action_bins):
                    raise ValueError(
                        f"{path} has n_action_bins={model.config.n_action_bins}, but n_action_bins={n_action_bins} "
                        "was requested; drop the argument or pick the matching checkpoint"
                    )
                # The LM's config tells AutoTokenizer the model family (config.json's "openvla" is unknown to it).
                tokenizer = AutoTokenizer.from_pretrained(
                    path, config=model.language_model.config, local_files_only=True
                )
            else:
                config = preset_config(str(source), n_action_bins or 256)
                model = OpenVLA.from_config(config, device, dtype)
                tokenizer = build_tiny_tokenizer(config.n_action_bins)
            policy = cls(model, VLAProcessor(tokenizer, model.config))
        if path.is_dir() and (path / VALUE_HEAD_FILE).is_file():
            policy.value_head.load_state_dict(read_safetensors(path / VALUE_HEAD_FILE))
        if adapter_dir is not None:
            policy.load_adapters(adapter_dir)
        return policy

    def save_pretrained(self, directory: str | Path) -> None:
        """Full checkpoint (config.json, safetensors shards, tokenizer, value head), written atomically.
        Adapters must be merged first (`merge_adapters`), or saved alone with `save_adapters`."""
        with atomic_directory(directory) as tmp:
            self.vla.write_checkpoint_files(tmp)
            self.processor.tokenizer.save_pretrained(tmp)
            save_file(self.value_head.state_dict(), tmp / VALUE_HEAD_FILE)

    def add_lora(self, settings: LoraSettings | None = None) -> None:
        """Attach fresh LoRA adapters (default r=32, alpha=16, dropout 0, all LM linears); freezes the rest."""
        if isinstance(self.model, PeftModel):
            raise ValueError("the policy already has adapters; merge_adapters() first to stack new ones")
        self.model = add_lora(self.model, settings or LoraSettings())

    def save_adapters(self, directory: str | Path) -> None:
        """PEFT adapter files (adapter_config.json, adapter_model.safetensors), the value head and the action
        normalization statistics, written atomically."""
        if not isinstance(self.model, PeftModel):
            raise ValueError("the policy has no adapters to save; call add_lora() or save_pretrained() instead")
        with atomic_directory(directory) as tmp:
            # The base weights stay frozen (LoRA on the LM head leaves lm_head itself unchanged): save only adapters.
            self.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
            save_file(self.value_head.state_dict(), tmp / VALUE_HEAD_FILE)
            if self.vla.config.norm_stats:
                (tmp / NORM_STATS_FILE).write_text(json.dumps(self.vla.config.norm_stats, indent=2))

    def load_adapters(self, directory: str | Path, trainable: bool = True) -> None:
        """Attach adapters saved by `save_adapters` (safetensors only) and load the value head saved with them."""
        directory = Path(directory)
        if isinstance(self.model, PeftModel):
            raise ValueError("the policy already has adapters; merge_adapters() first")
        if not (directory / ADAPTER_WEIGHTS_FILE).is_file() or not (directory / "adapter_config.json").is_file():
            raise MissingCheckpointError(
                f"{directory} lacks adapter_config.json or {ADAPTER_WEIGHTS_FILE} (pickled adapters are never loaded)"
            )
        check_safetensors(directory / ADAPTER_WEIGHTS_FILE)  # a truncated file fails here, naming it
        self.model = PeftModel.from_pretrained(self.model, directory, is_trainable=trainable)
        if (directory / VALUE_HEAD_FILE).is_file():
            self.value_head.load_state_dict(read_safetensors(directory / VALUE_HEAD_FILE, device=str(self.device)))

    def merge_adapters(self) -> None:
        """Fold the LoRA weights into the base weights and drop the adapters (pi0 becomes the merged model)."""
        if isinstance(self.model, PeftModel):
            self.model = self.model.merge_and_unload()

    @property
    def vla(self) -> OpenVLA:
        """The underlying OpenVLA module (with any LoRA layers injected in place)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def device(self) -> torch.device:
        return self.vla.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vla.language_model.lm_head.weight.dtype

    # --- acting ---

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray], instructions: Sequence[str]) -> PolicyBatch:
        """images: uint8 [B, H, W, 3] (or B arrays [H, W, 3]); instructions: B strings -> PolicyBatch on the
        policy's device (pixel_values in the model's dtype)."""
        return self.processor(images, instructions).to(self.device, self.dtype)

    def action_stats(self, unnorm_key: str) -> ActionStats:
        """The q01/q99/mask statistics of dataset `unnorm_key` from the model's norm_stats."""
        return ActionStats.from_norm_stats(self.vla.config.norm_stats, unnorm_key)

    @torch.no_grad()
    def generate(
        self,
        batch: PolicyBatch,
        do_sample: bool = True,
        temperature: float = 1.0,
        unnorm_key: str | None = None,
        generator: torch.Generator | None = None,
    ) -> ActionOutput:
        """Sample (or, with do_sample=False, pick greedily) the 7 action tokens for every row of `batch`:
        one prefill over images + prompts, then 6 KV-cached single-token steps. Log-probs are over the action
        bins at `temperature` in both modes. `generator` makes sampling reproducible."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False for greedy)")
        stats = self.action_stats(unnorm_key) if unnorm_key is not None else None
        _check_finite(batch)
        hidden, state = self.vla.prefill(batch.pixel_values, batch.input_ids, batch.attention_mask, ACTION_DIM - 1)
        values = self.value_head(hidden)
        bins, log_probs = [], []
        for step in range(ACTION_DIM):
            log_p = F.log_softmax(self.vla.action_logits(hidden).float() / temperature, dim=-1)  # [B, n_bins]
            if do_sample:
                chosen = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)
            else:
                chosen = log_p.argmax(dim=-1)
            bins.append(chosen)
            log_probs.append(log_p.gather(-1, chosen[:, None]).squeeze(-1))
            if step + 1 < ACTION_DIM:
                hidden = self.vla.decode_step(chosen + self.vla.action_token_offset, state)
        action_tokens = torch.stack(bins, dim=1) + self.vla.action_token_offset
        actions = self.action_tokenizer.decode(action_tokens.cpu().numpy())
        if stats is not None:
            actions = stats.unnormalize(actions)
        return ActionOutput(actions.astype(np.float32), action_tokens, torch.stack(log_probs, dim=1), values)

    def evaluate_actions(
        self,
        batch: PolicyBatch,
        action_tokens: torch.Tensor,
        temperature: float = 1.0,
        patch_embeddings: torch.Tensor | None = None,
    ) -> ActionScores:
        """Score given action tokens [B, 7] (vocabulary ids) in one teacher-forced forward pass, with gradients.

        patch_embeddings: `self.patch_embeddings(batch)` [B, P, D] computed earlier, reused instead of running the
        vision backbone and projector again (valid while they are frozen: `vision_frozen`)."""
        self._check_action_tokens(batch, action_tokens)
        hidden = self.vla.action_hidden_states(
            batch.pixel_values, batch.input_ids, batch.attention_mask, action_tokens, patch_embeddings
        )
        logits = self.vla.action_logits(hidden).float()  # [B, 7, n_bins]
        log_p = F.log_softmax(logits / temperature, dim=-1)
        chosen = (action_tokens - self.vla.action_token_offset).unsqueeze(-1)
        return ActionScores(
            log_probs=log_p.gather(-1, chosen).squeeze(-1),
            entropy=-(log_p.exp() * log_p).sum(-1),
            values=self.value_head(hidden[:, 0]),
            logits=logits,
        )

    def patch_embeddings(self, batch: PolicyBatch) -> torch.Tensor:
        """The projected patch embeddings [B, P, D] of the batch's images (the vision half of `evaluate_actions`)."""
        _check_finite(batch)
        return self.vla.patch_embeddings(batch.pixel_values)

    @property
    def vision_frozen(self) -> bool:
        """True when no parameter of the vision backbone or projector trains (LoRA on the LM only, the default):
        then an image's patch embeddings stay the same across optimizer steps."""
        vision = (self.vla.vision_backbone, self.vla.projector)
        return not any(p.requires_grad for module in vision for p in module.parameters())

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the base policy pi0: LoRA layers bypassed via peft's disable_adapter (no copy of the weights);
        a no-op without adapters."""
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield
        else:
            yield

    @torch.no_grad()
    def base_action_logits(self, batch: PolicyBatch, action_tokens: torch.Tensor) -> torch.Tensor:
        """pi0's raw action-bin logits [B, 7, n_action_bins] (float32) at each position of `action_tokens`."""
        self._check_action_tokens(batch, action_tokens)
        with self.adapters_disabled():
            hidden = self.vla.action_hidden_states(
                batch.pixel_values, batch.input_ids, batch.attention_mask, action_tokens
            )
            return self.vla.action_logits(hidden).float()

    def _check_action_tokens(self, batch: PolicyBatch, action_tokens: torch.Tensor) -> None:
        if action_tokens.shape != (len(batch), ACTION_DIM):
            raise ValueError(f"action_tokens must be [{len(batch)}, {ACTION_DIM}], got {list(action_tokens.shape)}")
        first, end = self.vla.action_token_offset, self.vla.config.base_vocab_size
        if bool(((action_tokens < first) | (action_tokens >= end)).any()):
            raise ValueError(f"action_tokens must be action-token ids in [{first}, {end}) (from generate or encode)")
        _check_finite(batch)


def _check_finite(batch: PolicyBatch) -> None:
    if not bool(torch.isfinite(batch.pixel_values).all()):
        raise ValueError("pixel_values contain NaN or infinite values")
