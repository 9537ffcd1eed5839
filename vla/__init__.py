"""OpenVLA as a native, checkpoint-compatible policy (timm + transformers, no remote code).

Entry points: `VLAPolicy` (acting, scoring, adapters), `GymPolicy` (observation dict -> action), `OpenVLA` (the
model; load/save checkpoints), `preset_config` (openvla-7b / small / tiny), `ActionTokenizer` / `ActionStats`
(OpenVLA's action discretization and normalization), `LoraSettings`.
"""

from vla.actions import ActionStats, ActionTokenizer
from vla.config import ACTION_DIM, PRESET_NAMES, OpenVLAConfig, preset_config
from vla.gym_policy import GymPolicy
from vla.lora import LoraSettings, add_lora
from vla.modeling import OpenVLA
from vla.policy import ActionOutput, ActionScores, VLAPolicy
from vla.processor import PolicyBatch, VLAProcessor, prompt_for
from vla.tokenizer import build_tiny_tokenizer

__all__ = [
    "ACTION_DIM",
    "PRESET_NAMES",
    "ActionOutput",
    "ActionScores",
    "ActionStats",
    "ActionTokenizer",
    "GymPolicy",
    "LoraSettings",
    "OpenVLA",
    "OpenVLAConfig",
    "PolicyBatch",
    "VLAPolicy",
    "VLAProcessor",
    "add_lora",
    "build_tiny_tokenizer",
    "preset_config",
    "prompt_for",
]
