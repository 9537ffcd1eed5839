"""Write openvla_7b_tensors.txt, the tensor names and shapes of the openvla/openvla-7b safetensors checkpoint.

Derived by hand from the published architecture, independently of vla/ and timm, so the test compares the model
against the specification rather than against itself:
- DINOv2 ViT-L/14 with 4 registers at 224 px: width 1024, 24 blocks, MLP 4096, LayerScale, class + register tokens,
  256 position embeddings (none for prefix tokens);
- SigLIP SO400M/14 at 224 px: width 1152, 27 blocks, MLP 4304, no class token, attention-pool head (latent query);
- fused GELU MLP projector 2176 -> 8704 -> 4096 -> 4096;
- Llama-2 7B: width 4096, 32 layers, MLP 11008, vocabulary 32000 + <PAD> padded to 32064, untied LM head.

Run: python tests/data/make_openvla_7b_tensors.py  (one "name dim0,dim1,..." line per tensor, sorted by name)
"""

from pathlib import Path


def vit(prefix, width, depth, mlp, n_patches, patch, layer_scale, prefix_tokens, attention_pool):
    tensors = {
        f"{prefix}.pos_embed": (1, n_patches, width),
        f"{prefix}.patch_embed.proj.weight": (width, 3, patch, patch),
        f"{prefix}.patch_embed.proj.bias": (width,),
        f"{prefix}.norm.weight": (width,),
        f"{prefix}.norm.bias": (width,),
    }
    tensors.update({f"{prefix}.{name}": (1, count, width) for name, count in prefix_tokens})
    for i in range(depth):
        block = f"{prefix}.blocks.{i}"
        tensors.update({
            f"{block}.norm1.weight": (width,), f"{block}.norm1.bias": (width,),
            f"{block}.attn.qkv.weight": (3 * width, width), f"{block}.attn.qkv.bias": (3 * width,),
            f"{block}.attn.proj.weight": (width, width), f"{block}.attn.proj.bias": (width,),
            f"{block}.norm2.weight": (width,), f"{block}.norm2.bias": (width,),
            f"{block}.mlp.fc1.weight": (mlp, width), f"{block}.mlp.fc1.bias": (mlp,),
            f"{block}.mlp.fc2.weight": (width, mlp), f"{block}.mlp.fc2.bias": (width,),
        })
        if layer_scale:
            tensors.update({f"{block}.ls1.scale_factor": (width,), f"{block}.ls2.scale_factor": (width,)})
    if attention_pool:
        pool = f"{prefix}.attn_pool"
        tensors.update({
            f"{pool}.latent": (1, 1, width),
            f"{pool}.q.weight": (width, width), f"{pool}.q.bias": (width,),
            f"{pool}.kv.weight": (2 * width, width), f"{pool}.kv.bias": (2 * width,),
            f"{pool}.proj.weight": (width, width), f"{pool}.proj.bias": (width,),
            f"{pool}.norm.weight": (width,), f"{pool}.norm.bias": (width,),
            f"{pool}.mlp.fc1.weight": (mlp, width), f"{pool}.mlp.fc1.bias": (mlp,),
            f"{pool}.mlp.fc2.weight": (width, mlp), f"{pool}.mlp.fc2.bias": (width,),
        })
    return tensors


def llama(prefix, width, depth, mlp, vocab):
    tensors = {
        f"{prefix}.model.embed_tokens.weight": (vocab, width),
        f"{prefix}.model.norm.weight": (width,),
        f"{prefix}.lm_head.weight": (vocab, width),
    }
    for i in range(depth):
        layer = f"{prefix}.model.layers.{i}"
        tensors.update({f"{layer}.self_attn.{p}_proj.weight": (width, width) for p in "qkvo"})
        tensors.update({
            f"{layer}.mlp.gate_proj.weight": (mlp, width), f"{layer}.mlp.up_proj.weight": (mlp, width),
            f"{layer}.mlp.down_proj.weight": (width, mlp),
            f"{layer}.input_layernorm.weight": (width,), f"{layer}.post_attention_layernorm.weight": (width,),
        })
    return tensors


def openvla_7b_tensors():
    n_patches = (224 // 14) ** 2
    tensors = {}
    tensors.update(vit("vision_backbone.featurizer", 1024, 24, 4096, n_patches, 14, True,
                       [("cls_token", 1), ("reg_token", 4)], False))
    tensors.update(vit("vision_backbone.fused_featurizer", 1152, 27, 4304, n_patches, 14, False, [], True))
    vision, llm = 1024 + 1152, 4096
    tensors.update({
        "projector.fc1.weight": (4 * vision, vision), "projector.fc1.bias": (4 * vision,),
        "projector.fc2.weight": (llm, 4 * vision), "projector.fc2.bias": (llm,),
        "projector.fc3.weight": (llm, llm), "projector.fc3.bias": (llm,),
    })
    tensors.update(llama("language_model", llm, 32, 11008, 32064))
    return tensors


if __name__ == "__main__":
    lines = [f"{name} {','.join(map(str, shape))}" for name, shape in sorted(openvla_7b_tensors().items())]
    Path(__file__).with_name("openvla_7b_tensors.txt").write_text("\n".join(lines) + "\n")
