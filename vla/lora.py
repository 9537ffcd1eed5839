"""LoRA through peft, as OpenVLA's fine-tuning script does it (LoraConfig -> get_peft_model).

By default it adapts every linear layer of the LM's decoder blocks (q/k/v/o and gate/up/down projections):
79,953,920 trainable parameters on OpenVLA-7B at r=32. The ViT blocks, the projector and the LM head can be added.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

_LM_LINEARS = r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_VISION_LINEARS = r"vision_backbone\.(featurizer|fused_featurizer)\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
_PROJECTOR_LINEARS = r"projector\.fc[123]"
_LM_HEAD = r"language_model\.lm_head"


@dataclass
class LoraSettings:
    r: int = 32
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r); OpenVLA uses min(r, 16)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    vision: bool = False
    """Also adapt the attention and MLP linears of both ViTs."""
    projector: bool = False
    """Also adapt the projector's fc1/fc2/fc3."""
    lm_head: bool = False
    """Also adapt the LM head (OpenVLA's all-linear setting does; a randomly initialized tiny model needs it to make
    its action distribution peaked, since a frozen random head bounds the logits)."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid LoRA settings r={self.r}, alpha={self.alpha}, dropout={self.dropout}")

    def target_modules(self) -> str:
        """peft regex (full match on module names) selecting the adapted linear layers."""
        patterns = [_LM_LINEARS]
        if self.vision:
            patterns.append(_VISION_LINEARS)
        if self.projector:
            patterns.append(_PROJECTOR_LINEARS)
        if self.lm_head:
            patterns.append(_LM_HEAD)
        return "|".join(f"({p})" for p in patterns)


def add_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (gaussian A, zero B: the output is unchanged at first);
    all other parameters are frozen."""
    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules(),
        init_lora_weights="gaussian",
    )
    peft_model = get_peft_model(model, lora_config)
    peft_model.print_trainable_parameters()
    return peft_model
