"""Architecture, checkpoint format and loading of vla.modeling.OpenVLA."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from vla_fixtures import INSTRUCTIONS, make_tiny_policy, random_images

from vla import LoraSettings, OpenVLA, OpenVLAConfig, VLAPolicy, add_lora, preset_config
from vla.checkpoint import INDEX_FILE, CorruptCheckpointError


@pytest.fixture
def tiny_policy() -> VLAPolicy:
    return make_tiny_policy()


EXPECTED_TENSORS = Path(__file__).parent / "data" / "openvla_7b_tensors.txt"


def read_expected_tensors() -> dict[str, tuple[int, ...]]:
    lines = EXPECTED_TENSORS.read_text().split("\n")
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape in (line.split() for line in lines if line)}


def test_openvla_7b_on_meta_has_the_checkpoint_tensors():
    model = OpenVLA.from_config(preset_config("openvla-7b"), device="meta")
    state = model.state_dict()
    expected = read_expected_tensors()
    assert len(expected) == 982
    assert set(state) == set(expected), sorted(set(state) ^ set(expected))[:20]
    assert {name: tuple(t.shape) for name, t in state.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 7_541_237_184
    assert all(p.is_meta for p in model.parameters())
    assert model.num_patches == 256 and model.action_token_offset == 31744


def test_default_lora_on_openvla_7b_adapts_all_llm_linears():
    model = OpenVLA.from_config(preset_config("openvla-7b"), device="meta")
    peft_model = add_lora(model, LoraSettings())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 79_953_920  # r=32 on q/k/v/o/gate/up/down of 32 layers


def test_lora_on_the_lm_head_adds_its_rank_32_factors():
    model = OpenVLA.from_config(preset_config("openvla-7b"), device="meta")
    peft_model = add_lora(model, LoraSettings(lm_head=True))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 79_953_920 + 32 * (4096 + 32064)  # A: r x 4096, B: 32064 x r


def test_presets_are_the_same_classes_at_their_sizes():
    tiny = OpenVLA.from_config(preset_config("tiny"))
    small = OpenVLA.from_config(preset_config("small"))
    assert 0.5e6 < sum(p.numel() for p in tiny.parameters()) < 1.5e6
    assert 10e6 < sum(p.numel() for p in small.parameters()) < 20e6
    assert type(tiny.vision_backbone.featurizer) is type(small.vision_backbone.fused_featurizer)
    assert any(name.endswith("ls1.scale_factor") for name, _ in tiny.named_parameters())
    assert OpenVLA.from_config(preset_config("tiny", n_action_bins=32)).config.n_action_bins == 32


def test_vision_features_come_from_the_second_to_last_block_without_prefix_or_norm(tiny_policy):
    backbone = tiny_policy.vla.vision_backbone
    pixel_values = tiny_policy.preprocess(random_images(2), INSTRUCTIONS[:2]).pixel_values
    expected = []
    for vit, images in zip(
        (backbone.featurizer, backbone.fused_featurizer), pixel_values.split([3, 3], dim=1), strict=True
    ):
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in vit.blocks[:-1]:
            x = block(x)
        expected.append(x[:, vit.num_prefix_tokens :])
    torch.testing.assert_close(backbone(pixel_values), torch.cat(expected, dim=2))


def test_patches_go_right_after_bos_of_left_padded_rows(tiny_policy):
    batch = tiny_policy.preprocess(random_images(2), ["push", "open the top drawer of the cabinet"])
    model = tiny_policy.vla
    mm = model.embed_multimodal(batch.pixel_values, batch.input_ids, batch.attention_mask)
    n_pad = int((batch.attention_mask[0] == 0).sum())
    assert n_pad > 0 and mm.attention_mask[0, :n_pad].eq(0).all() and mm.attention_mask[0, n_pad:].eq(1).all()
    embed = model.language_model.get_input_embeddings()
    torch.testing.assert_close(mm.inputs_embeds[0, n_pad], embed(batch.input_ids[0, n_pad]))  # BOS
    patches = model.projector(model.vision_backbone(batch.pixel_values))
    torch.testing.assert_close(mm.inputs_embeds[0, n_pad + 1 : n_pad + 1 + model.num_patches], patches[0])
    assert mm.position_ids[0, n_pad].item() == 0 and mm.position_ids[1, 0].item() == 0
    assert mm.position_ids[0, -1] == mm.position_ids[1, -1] - n_pad


def test_save_load_round_trip_reproduces_logits(tiny_policy, tmp_path):
    batch = tiny_policy.preprocess(random_images(2), INSTRUCTIONS[:2])
    with torch.no_grad():
        expected = tiny_policy.vla(batch.pixel_values, batch.input_ids, batch.attention_mask).logits
    tiny_policy.vla.save_pretrained(tmp_path / "ckpt", max_shard_bytes=1_000_000)  # forces several shards
    tiny_policy.processor.tokenizer.save_pretrained(tmp_path / "ckpt")
    index = json.loads((tmp_path / "ckpt" / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1

    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    with torch.no_grad():
        logits = loaded.vla(batch.pixel_values, batch.input_ids, batch.attention_mask).logits
    assert torch.equal(logits, expected)
    assert loaded.vla.config.norm_stats == tiny_policy.vla.config.norm_stats

    bf16 = OpenVLA.from_pretrained(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_config_keeps_unknown_fields_on_save(tmp_path):
    config = preset_config("tiny")
    data = {
        **config.to_dict(),
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig"},
        "llm_max_length": 2048,
    }
    reloaded = OpenVLAConfig.from_dict(data)
    reloaded.save(tmp_path / "config.json", "float32")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == data["auto_map"] and saved["llm_max_length"] == 2048
    assert saved["vision_overrides"] == config.vision_overrides and saved["torch_dtype"] == "float32"


@pytest.fixture
def tiny_checkpoint(tiny_policy, tmp_path) -> Path:
    tiny_policy.vla.save_pretrained(tmp_path / "ckpt", max_shard_bytes=1_000_000)
    return tmp_path / "ckpt"


def _rewrite_index(directory: Path, edit) -> None:
    index = json.loads((directory / INDEX_FILE).read_text())
    edit(index["weight_map"])
    (directory / INDEX_FILE).write_text(json.dumps(index))


def test_missing_or_partial_checkpoints_are_reported(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OpenVLA.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        OpenVLA.from_pretrained(empty)
    shutil.copy(tiny_checkpoint / "config.json", empty / "config.json")
    (empty / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickles are never loaded"):
        OpenVLA.from_pretrained(empty)
    shard = sorted(tiny_checkpoint.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"incomplete.*{shard.name}"):
        OpenVLA.from_pretrained(tiny_checkpoint)


def test_truncated_shard_names_the_file_and_the_fix(tiny_checkpoint):
    shard = sorted(tiny_checkpoint.glob("model-*.safetensors"))[0]
    os.truncate(shard, shard.stat().st_size - 100)  # an interrupted download
    with pytest.raises(CorruptCheckpointError, match=rf"{shard}.*truncated or corrupt.*re-download it"):
        OpenVLA.from_pretrained(tiny_checkpoint)


def test_missing_and_unexpected_tensors_are_listed(tiny_checkpoint):
    def rename(weight_map):
        weight_map["projector.fc4.weight"] = weight_map.pop("projector.fc3.weight")

    _rewrite_index(tiny_checkpoint, rename)
    with pytest.raises(
        ValueError, match=r"missing tensors: projector\.fc3\.weight[\s\S]*unexpected tensors: projector\.fc4"
    ):
        OpenVLA.from_pretrained(tiny_checkpoint)


def test_shape_mismatch_names_the_tensors(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 8
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"wrong shape.*mlp\.gate_proj\.weight"):
        OpenVLA.from_pretrained(tiny_checkpoint)


def test_saving_with_attached_adapters_asks_to_merge(tiny_policy, tmp_path):
    tiny_policy.add_lora(LoraSettings(r=4))
    with pytest.raises(ValueError, match="merge them first"):
        tiny_policy.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())  # atomic: nothing left behind


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="fused"):
        OpenVLAConfig(use_fused_vision_backbone=False)
    with pytest.raises(ValueError, match="multiple of"):
        OpenVLAConfig(text_config={"vocab_size": 32001})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
