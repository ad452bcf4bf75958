"""Tiny random Hugging Face checkpoints (transformers + torch), written by the tests themselves."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 320


# Shapes shared by the Llama-architecture families (Llama, Mistral, Qwen2, Qwen3).
_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_llama(path, *, tied=False, kv_heads=2, bias=False, rope_scaling=None, seed=0, intermediate=112):
    config = transformers.LlamaConfig(
        **{**_DECODER, "intermediate_size": intermediate},
        num_key_value_heads=kv_heads,
        rope_theta=10000.0,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tied,
        attention_bias=bias,
    )
    return _save(transformers.LlamaForCausalLM, config, path, seed)


def tiny_mistral(path, *, sliding_window=None, seed=0):
    config = transformers.MistralConfig(**_DECODER, num_key_value_heads=2, sliding_window=sliding_window)
    return _save(transformers.MistralForCausalLM, config, path, seed)


def tiny_qwen2(path, *, tied=False, use_sliding_window=False, seed=0):
    config = transformers.Qwen2Config(**_DECODER, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=tied,
                                      use_sliding_window=use_sliding_window, sliding_window=16, max_window_layers=1)
    return _save(transformers.Qwen2ForCausalLM, config, path, seed)


def tiny_qwen3(path, *, tied=False, bias=False, head_dim=32, seed=0):
    """head_dim 32 with 4 heads of a 64-wide model: Qwen3's head size is its own setting."""
    config = transformers.Qwen3Config(**_DECODER, num_key_value_heads=2, head_dim=head_dim, rope_theta=1e6,
                                      tie_word_embeddings=tied, attention_bias=bias)
    return _save(transformers.Qwen3ForCausalLM, config, path, seed)


def tiny_qwen3_moe(path, *, mlp_only_layers=(), norm_topk_prob=True, seed=0):
    """8 experts of size 32, top 2; `mlp_only_layers` keeps those layers dense (intermediate_size)."""
    config = transformers.Qwen3MoeConfig(**_DECODER, num_key_value_heads=2, head_dim=16, num_experts=8,
                                         num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                                         mlp_only_layers=list(mlp_only_layers), norm_topk_prob=norm_topk_prob)
    return _save(transformers.Qwen3MoeForCausalLM, config, path, seed)


def tiny_mixtral(path, *, seed=0):
    """4 experts of size 48, top 2, in both layers."""
    config = transformers.MixtralConfig(**{**_DECODER, "intermediate_size": 48}, num_key_value_heads=2,
                                        num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    return _save(transformers.MixtralForCausalLM, config, path, seed)


def tiny_gpt2(path, seed=0):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2
    )
    return _save(transformers.GPT2LMHeadModel, config, path, seed)


def tiny_bert(path, *, num_labels=None, head="token", seed=0):
    """BertModel, or with `num_labels` BertForTokenClassification (head="token") / BertForSequenceClassification."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=128,
    )
    if num_labels:
        config.id2label = {i: f"TAG{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        if head == "sequence":
            config.problem_type = "single_label_classification"
            return _save(transformers.BertForSequenceClassification, config, path, seed)
        return _save(transformers.BertForTokenClassification, config, path, seed)
    return _save(transformers.BertModel, config, path, seed)


def _save(cls, config, path, seed):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # random biases and norms, so a mapping mistake cannot hide behind zeros/ones
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):  # MoE routers: decisive choices
                p.mul_(20.0)
    model.save_pretrained(path)
    return model


def padded_batch(seed=0, batch=3, length=11):
    """Random ids with right padding in all but the first row."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, size=(batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 2 * row :] = 0
    ids[mask == 0] = 0
    return ids, mask


def left_padded_batch(seed=0, batch=3, length=11):
    """`padded_batch` with each row's padding moved to the front (batched generation's layout), and the
    positions transformers must be given for it (it counts positions from the first column otherwise)."""
    ids, mask = padded_batch(seed, batch, length)
    shifts = length - mask.sum(1)
    ids, mask = (np.stack([np.roll(row, s) for row, s in zip(a, shifts, strict=True)]) for a in (ids, mask))
    return ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def torch_logits(model, ids, mask, **kwargs):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kwargs)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def assert_same_tensors(folder, other) -> None:
    """Both folders' model.safetensors hold the same tensor names with equal values (an export round trip)."""
    from safetensors.numpy import load_file

    original, exported = load_file(f"{folder}/model.safetensors"), load_file(f"{other}/model.safetensors")
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
