"""Model configuration: the fields of OpenVLA's config.json, and the named presets.

`openvla-7b` is the exact architecture of the released checkpoint. `small` (~15M parameters) and `tiny` (~1M) use the
same classes (the same timm model ids and LlamaForCausalLM) shrunk through timm keyword overrides and a small Llama
config, for tests and CPU runs. They are randomly initialized and use the tokenizer in `vla/tokenizer.py`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from vla.tokenizer import VOCAB_MULTIPLE, tiny_base_vocab_size

DINOV2_TIMM_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_TIMM_ID = "vit_so400m_patch14_siglip_224"
ACTION_DIM = 7  # OpenVLA's end-effector action: xyz delta, rotation delta, gripper
_OPENVLA_IDENTITY = {"architectures": ["OpenVLAForActionPrediction"], "model_type": "openvla"}


@dataclass
class OpenVLAConfig:
    """The fields of an OpenVLA config.json that define the model (unknown keys are kept in `extra`)."""

    timm_model_ids: list[str] = field(default_factory=lambda: [DINOV2_TIMM_ID, SIGLIP_TIMM_ID])
    """timm ids of the fused featurizers: DINOv2 first (channels 0-2), SigLIP second (channels 3-5)."""
    image_sizes: list[int] = field(default_factory=lambda: [224, 224])
    """Input resolution of each featurizer; both must be equal (one resized image feeds both)."""
    text_config: dict[str, Any] = field(default_factory=lambda: {"model_type": "llama", "vocab_size": 32064})
    """LlamaConfig keyword arguments (missing fields take LlamaConfig's defaults, as OpenVLA's code does)."""
    n_action_bins: int = 256
    """Number of action bins; the last `n_action_bins` ids of the base vocabulary are action tokens."""
    norm_stats: dict[str, Any] | None = None
    """Per-dataset statistics, `{dataset: {"action": {"q01": [...], "q99": [...], "mask": [...]}}}`."""
    pad_to_multiple_of: int = 64
    """The LM vocabulary (base vocabulary + `<PAD>`) is padded to a multiple of this."""
    pad_token_id: int = 32000
    """Id of `<PAD>`, the first id after the base vocabulary."""
    use_fused_vision_backbone: bool = True
    """Only the fused DINOv2 + SigLIP backbone is supported."""
    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    """Prismatic's name of the backbone pair; informational (timm_model_ids define the architecture)."""
    llm_backbone_id: str = "llama2-7b-pure"
    """Prismatic's name of the LM; informational (text_config defines the architecture)."""
    arch_specifier: str = "no-align+fused-gelu-mlp"
    """Prismatic's projector name; the fused GELU MLP is the only one implemented."""
    vision_overrides: list[dict[str, Any]] = field(default_factory=lambda: [{}, {}])
    """timm.create_model keyword overrides per featurizer (embed_dim, depth, ...); empty for the real checkpoint."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other config.json keys (architectures, auto_map, ...), written back unchanged by `save`."""

    def __post_init__(self) -> None:
        if not self.use_fused_vision_backbone or len(self.timm_model_ids) != 2:
            raise ValueError(
                "only the fused two-featurizer backbone (DINOv2 + SigLIP, use_fused_vision_backbone=true) is "
                f"supported; got use_fused_vision_backbone={self.use_fused_vision_backbone}, "
                f"timm_model_ids={self.timm_model_ids}"
            )
        if len(self.image_sizes) != 2 or self.image_sizes[0] != self.image_sizes[1]:
            raise ValueError(
                f"image_sizes must be two equal sizes (one image feeds both featurizers), got {self.image_sizes}"
            )
        if len(self.vision_overrides) != 2:
            raise ValueError(f"vision_overrides needs one dict per featurizer, got {self.vision_overrides}")
        vocab = self.text_config.get("vocab_size")
        if not isinstance(vocab, int) or vocab % self.pad_to_multiple_of:
            raise ValueError(
                f"text_config.vocab_size must be a multiple of pad_to_multiple_of={self.pad_to_multiple_of}, "
                f"got {vocab}"
            )
        if not 2 <= self.n_action_bins <= self.base_vocab_size:
            raise ValueError(f"n_action_bins={self.n_action_bins} must be in [2, {self.base_vocab_size}]")

    @property
    def base_vocab_size(self) -> int:
        """Tokenizer vocabulary without `<PAD>` (32000 for Llama-2): action tokens end just below it."""
        return self.text_config["vocab_size"] - self.pad_to_multiple_of

    @property
    def image_size(self) -> int:
        return self.image_sizes[0]

    def llama_config(self) -> LlamaConfig:
        # The checkpoint's dtype is chosen at load time, not by the config. Attention is sdpa always: the cached
        # decode path (vla.modeling.decoder_layer) calls it directly and builds its masks for it, so the LM's own
        # forward (teacher-forced scoring, the KL) must compute the same attention.
        ignored = ("torch_dtype", "dtype", "attn_implementation", "_attn_implementation")
        kwargs = {k: v for k, v in self.text_config.items() if k not in ignored}
        return LlamaConfig(**kwargs, attn_implementation="sdpa")

    def to_dict(self) -> dict[str, Any]:
        """config.json content: the extra keys first (as in the original file), then the model fields."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if not any(fields["vision_overrides"]):
            del fields["vision_overrides"]
        return {**self.extra, **fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenVLAConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def load(cls, path: str | Path) -> OpenVLAConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); re-download the checkpoint's config.json") from error
        return cls.from_dict(data)

    def save(self, path: str | Path, dtype_name: str) -> None:
        """Write config.json; `dtype_name` ("bfloat16", "float32") records the dtype of the saved weights."""
        data = {**self.to_dict(), "torch_dtype": dtype_name}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _reduced_config(
    n_action_bins: int,
    image_size: int,
    patch_size: int,
    vision_width: int,
    vision_depth: int,
    vision_heads: int,
    llm_width: int,
    llm_depth: int,
    llm_heads: int,
) -> OpenVLAConfig:
    """A shrunk copy of the OpenVLA architecture with the preset tokenizer's vocabulary."""
    base_vocab = tiny_base_vocab_size(n_action_bins)
    vision = dict(embed_dim=vision_width, depth=vision_depth, num_heads=vision_heads, patch_size=patch_size)
    return OpenVLAConfig(
        extra=dict(_OPENVLA_IDENTITY),
        image_sizes=[image_size, image_size],
        vision_overrides=[dict(vision), dict(vision)],
        n_action_bins=n_action_bins,
        pad_token_id=base_vocab,
        text_config=dict(
            model_type="llama",
            vocab_size=base_vocab + VOCAB_MULTIPLE,
            hidden_size=llm_width,
            intermediate_size=llm_width * 8 // 3,
            num_hidden_layers=llm_depth,
            num_attention_heads=llm_heads,
            num_key_value_heads=llm_heads,
            max_position_embeddings=512,
            pad_token_id=base_vocab,
        ),
    )


def preset_config(name: str, n_action_bins: int = 256) -> OpenVLAConfig:
    """Named configs: `openvla-7b` (exact checkpoint architecture), `small` (~15M params), `tiny` (~1M params).

    `n_action_bins` may be changed for `small` and `tiny` only.
    """
    if name == "openvla-7b":
        if n_action_bins != 256:
            raise ValueError("openvla-7b has 256 action bins; n_action_bins can only be changed for small/tiny")
        return OpenVLAConfig(
            text_config={"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
            extra=dict(_OPENVLA_IDENTITY),
        )
    if name == "small":
        return _reduced_config(n_action_bins, 64, 8, 192, 6, 3, 384, 4, 6)
    if name == "tiny":
        return _reduced_config(n_action_bins, 32, 8, 64, 2, 2, 128, 2, 4)
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")


PRESET_NAMES = ("openvla-7b", "small", "tiny")
