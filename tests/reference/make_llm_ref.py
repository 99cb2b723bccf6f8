#!/usr/bin/env python3
"""Golden files for the LLM decoder layer (libcommon/model/llm_layer.c), from Hugging Face
transformers' own modules in fp32 with eager attention, and PyTorch autograd.

Writes (run from the repository root):
  tests/data/llm_layer_ref.safetensors   the goldens below; metadata "lm.ref": versions, settings
  tests/data/llm_tiny_llama/             a random tiny LlamaForCausalLM saved by save_pretrained:
                                         BF16, sharded (model.safetensors.index.json + shards)
  tests/data/llm_tiny_qwen2/             a random tiny Qwen2ForCausalLM (q/k/v biases), F16
  tests/data/llm_tiny_phi3/              a random tiny Phi3ForCausalLM (fused qkv_proj and
                                         gate_up_proj), F32

Goldens (tensor names in llm_layer_ref.safetensors):
  stories.*   layer 2 of ../shared/weights/stories260K-hf (LlamaDecoderLayer, GQA 8/4, theta 1e4):
              x [12,64] ~ N(0,1); y_bidir (attention_mask None, eager: no mask); y_causal
              (additive -inf mask above the diagonal); with LoRA on q/k/v (rank 4, alpha 8,
              s = 2, PEFT form base(a) + B(A(a))·s) and given lora_{q,k,v}.{A,B}: y_lora, and for
              g [12,64] ~ N(0,1) the gradients of sum(y_lora·g): dx, lora_{q,k,v}.{dA,dB}.
  llama_tiny.*, qwen2_tiny.*, phi3_tiny.*: x [7,32], layer 1 (phi3: layer 0) outputs y_bidir
              and y_causal of the saved-and-reloaded model (weights exactly as on disk, upcast).
Positions are 0..L-1 everywhere (RoPE rotate_half from the model's own rotary embedding).

Also checks that the full stories260K model, greedily decoding from BOS, reproduces
../shared/weights/stories260K-hf/greedy-reference.json (a sanity check of this setup).

Needs torch and transformers (versions go into the metadata), numpy, safetensors.
Deterministic: fixed seeds, one thread. No network.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

STORIES = "../shared/weights/stories260K-hf"
OUT = "tests/data/llm_layer_ref.safetensors"
TINY = {"llama": "tests/data/llm_tiny_llama", "qwen2": "tests/data/llm_tiny_qwen2",
        "phi3": "tests/data/llm_tiny_phi3"}
L_STORIES, L_TINY = 12, 7
RANK, ALPHA = 4, 8.0


def npf(t):
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def causal_mask(L):
    m = torch.full((L, L), float("-inf")).triu(1)
    return m[None, None]


def run_layer(model, layer, x, causal):
    """x [L,D] -> layer output [L,D] (batch 1), eager attention, positions 0..L-1."""
    L = x.shape[0]
    h = x[None]
    pos = torch.arange(L)[None]
    cos_sin = model.model.rotary_emb(h, position_ids=pos)
    mask = causal_mask(L) if causal else None
    y = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
    if isinstance(y, tuple):
        y = y[0]
    return y[0]


class LoRALinear(torch.nn.Module):
    """PEFT's lora.Linear forward with dropout 0: base(x) + lora_B(lora_A(x)) * scaling."""

    def __init__(self, base, A, B, scaling):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(A.clone())
        self.B = torch.nn.Parameter(B.clone())
        self.scaling = scaling

    def forward(self, x):
        return self.base(x) + (x @ self.A.t()) @ self.B.t() * self.scaling


def greedy_check(model):
    ref = json.load(open(os.path.join(STORIES, "greedy-reference.json")))
    ids = list(ref["prompt_ids"])
    with torch.no_grad():
        while len(ids) < len(ref["greedy_ids"]):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    ok = ids == ref["greedy_ids"]
    print(f"stories260K greedy from BOS with transformers: {'matches' if ok else 'DIFFERS FROM'} "
          "greedy-reference.json")
    if not ok:
        sys.exit("reference setup broken: HF greedy decoding differs")


def stories(out, meta):
    model = LlamaForCausalLM.from_pretrained(STORIES, dtype=torch.float32,
                                             attn_implementation="eager")
    model.eval()
    greedy_check(model)
    layer = model.model.layers[2]
    D = model.config.hidden_size
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(L_STORIES, D, generator=g)
    with torch.no_grad():
        out["stories.x"] = npf(x)
        out["stories.y_bidir"] = npf(run_layer(model, layer, x, False))
        out["stories.y_causal"] = npf(run_layer(model, layer, x, True))
    attn = layer.self_attn
    loras = {}
    for nm in ("q", "k", "v"):
        base = getattr(attn, nm + "_proj")
        A = 0.1 * torch.randn(RANK, D, generator=g)
        B = 0.1 * torch.randn(base.out_features, RANK, generator=g)
        loras[nm] = LoRALinear(base, A, B, ALPHA / RANK)
        setattr(attn, nm + "_proj", loras[nm])
        out[f"stories.lora_{nm}.A"] = npf(A)
        out[f"stories.lora_{nm}.B"] = npf(B)
    gy = torch.randn(L_STORIES, D, generator=g)
    xr = x.clone().requires_grad_(True)
    y = run_layer(model, layer, xr, False)
    (y * gy).sum().backward()
    out["stories.g"] = npf(gy)
    out["stories.y_lora"] = npf(y)
    out["stories.dx"] = npf(xr.grad)
    for nm in ("q", "k", "v"):
        out[f"stories.lora_{nm}.dA"] = npf(loras[nm].A.grad)
        out[f"stories.lora_{nm}.dB"] = npf(loras[nm].B.grad)
    meta["stories"] = json.dumps({"layer": 2, "L": L_STORIES, "rank": RANK, "alpha": ALPHA})


def randomise(model, g):
    """Weights far from the default N(0, 0.02) so that every term of the layer matters."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5))


def tiny(kind, out, meta, seed):
    common = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=16, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="eager")
    if kind == "llama":
        cfg = LlamaConfig(rope_theta=500000.0, **common)
        cls, dtype, layer_id, shard = LlamaForCausalLM, torch.bfloat16, 1, "6KB"
    elif kind == "qwen2":
        cfg = Qwen2Config(rope_theta=1000000.0, **common)
        cls, dtype, layer_id, shard = Qwen2ForCausalLM, torch.float16, 1, None
    else:
        cfg = Phi3Config(rope_theta=10000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         original_max_position_embeddings=64, **common)
        cls, dtype, layer_id, shard = Phi3ForCausalLM, torch.float32, 0, None
    g = torch.Generator().manual_seed(seed)
    model = cls(cfg)
    randomise(model, g)
    model = model.to(dtype)
    d = TINY[kind]
    shutil.rmtree(d, ignore_errors=True)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(d, **kw)
    for f in os.listdir(d):  # keep only what a model folder must have
        if f != "config.json" and not f.startswith("model"):
            os.remove(os.path.join(d, f))
        else:
            os.chmod(os.path.join(d, f), 0o644)
    back = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    x = torch.randn(L_TINY, cfg.hidden_size, generator=g)
    with torch.no_grad():
        out[f"{kind}_tiny.x"] = npf(x)
        out[f"{kind}_tiny.y_bidir"] = npf(run_layer(back, back.model.layers[layer_id], x, False))
        out[f"{kind}_tiny.y_causal"] = npf(run_layer(back, back.model.layers[layer_id], x, True))
    meta[f"{kind}_tiny"] = json.dumps({"layer": layer_id, "L": L_TINY, "dir": d,
                                       "files": sorted(os.listdir(d))})


def main():
    if not os.path.isdir("tests/data"):
        sys.exit("run from the repository root (tests/data not found)")
    if not os.path.isdir(STORIES):
        sys.exit(f"{STORIES} not found (../shared absent?)")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out, meta = {}, {}
    stories(out, meta)
    for i, kind in enumerate(("llama", "qwen2", "phi3")):
        tiny(kind, out, meta, 100 + i)
    meta["versions"] = json.dumps({"torch": torch.__version__,
                                   "transformers": transformers.__version__,
                                   "numpy": np.__version__})
    # one metadata key: the writer's key order is not stable between runs
    save_file(out, OUT, metadata={"lm.ref": json.dumps(meta, sort_keys=True)})
    size = os.path.getsize(OUT) + sum(os.path.getsize(os.path.join(d, f))
                                      for d in TINY.values() for f in os.listdir(d))
    print(f"wrote {OUT} ({len(out)} tensors) and {len(TINY)} tiny model folders; "
          f"{size} bytes in all")


if __name__ == "__main__":
    main()
