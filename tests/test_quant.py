"""int8 weights: the matmul equals dequantise-then-matmul, the model generates, nothing float-sized is materialised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlm
from hf_checkpoints import (
    padded_batch,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_phi3,
    tiny_qwen2,
    tiny_qwen3,
    tiny_qwen3_moe,
)
from jaxlm.models.moe import Experts, SparseMoE
from jaxlm.models.quant import (
    DIGIT_BASE,
    Int8Embed,
    Int8Experts,
    Int8Linear,
    dequantize,
    int8_digits,
    int8_matmul,
    quantize_int8,
    quantize_rows,
)


def _logits(model, ids, mask=None):
    """One jitted forward pass (eager mode would compile every small op of the int8 path on its own)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    return np.asarray(forward(state, jnp.asarray(ids), None if mask is None else jnp.asarray(mask)))


def _random(shape, seed, scale=1.0):
    return jnp.asarray(np.random.RandomState(seed).standard_normal(shape).astype(np.float32) * scale)


def test_rows_round_to_int8_within_half_a_step():
    w = _random((48, 80), 0).at[3].set(0.0)  # an all-zero row keeps a usable scale
    q, scale = quantize_rows(w)
    assert q.dtype == jnp.int8 and int(jnp.abs(q).max()) == 127
    err = jnp.abs(q.astype(jnp.float32) * scale[:, None] - w)
    assert bool(jnp.all(err <= scale[:, None] / 2 + 1e-7))
    assert float(scale[3]) == 1.0 and not bool(jnp.any(q[3]))


def test_two_int8_digits_hold_activations_to_about_15_bits():
    x = _random((5, 64), 1).at[0, 7].set(40.0)  # an outlier that one int8 digit could not resolve around
    digits, step = int8_digits(x)
    high, low = digits[:5].astype(jnp.float32), digits[5:].astype(jnp.float32)
    rebuilt = step[:, None] * (high + low / DIGIT_BASE)
    assert bool(jnp.all(jnp.abs(rebuilt - x) <= step[:, None] / (2 * DIGIT_BASE) + 1e-6))


@pytest.mark.parametrize("activations", ["float", "int8"])
@pytest.mark.parametrize("lead", [(1, 1), (3, 7)])  # one decode token; a prefill batch
def test_int8_matmul_equals_dequantise_then_matmul(activations, lead):
    w = _random((96, 64), 2, 0.05)  # [out, in]
    q, scale = quantize_rows(w)
    x = _random((*lead, 64), 3)
    reference = x @ (q.astype(jnp.float32) * scale[:, None]).T
    got = int8_matmul(x, q, scale, activations)
    assert got.shape == (*lead, 96)
    # "float" is the same arithmetic; "int8" rounds x to ~15 bits (see the digits test): relative 1e-4.
    tolerance = 1e-5 if activations == "float" else 1e-4 * float(jnp.abs(reference).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference), atol=tolerance, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    tiny_llama(root / "tied", tied=True)
    tiny_llama(root / "bias", bias=True)
    tiny_gpt2(root / "gpt2")
    tiny_qwen2(root / "qwen2")  # q/k/v biases, untied
    tiny_qwen3(root / "qwen3", tied=True)  # query/key norms
    tiny_gemma3(root / "gemma3")  # tied, per-layer windows and RoPE
    tiny_phi3(root / "phi3", longrope=True, original=4, partial_rotary=0.75)  # split fused projections, longrope
    tiny_qwen3_moe(root / "qwen3_moe", mlp_only_layers=[1])  # a sparse layer and a dense one
    return root


TIED = {"tied", "gpt2", "qwen3"}


@pytest.mark.parametrize("name", ["tied", "bias", "gpt2", "qwen2", "qwen3", "qwen3_moe"])
def test_an_int8_model_gives_the_float_logits_up_to_weight_rounding(tiny_models, name):
    model, _ = jaxlm.load_pretrained(tiny_models / name)
    int8, _ = jaxlm.load_pretrained(tiny_models / name, quantize="int8")
    modules = [m for _, m in nnx.iter_modules(int8)]
    routers = [m.gate for m in modules if isinstance(m, SparseMoE)]  # kept float, as llama.cpp keeps them
    assert not any(type(m) is nnx.Linear and not any(m is r for r in routers) for m in modules)
    assert all(type(r) is nnx.Linear for r in routers) and not any(type(m) is Experts for m in modules)
    assert any(isinstance(m, Int8Experts) for m in modules) == (name == "qwen3_moe")
    assert any(isinstance(m, Int8Embed) for m in modules) == (name in TIED)  # the tied head goes int8 too
    ids, mask = padded_batch(seed=2)
    real = mask.astype(bool)
    ours, ref = _logits(int8, ids, mask), _logits(model, ids, mask)
    # Weights rounded to 1/254 of each row's largest value: logits move by ~1% of their range.
    assert np.abs(ours[real] - ref[real]).max() <= 0.02 * np.abs(ref[real]).max()
    # Dequantising gives a float model computing what the int8 weights stand for (up to the activation
    # digits); a tied embedding comes back as the float table its lookups always used.
    back = dequantize(int8)
    assert not any(isinstance(m, (Int8Linear, Int8Embed, Int8Experts)) for _, m in nnx.iter_modules(back))
    if name not in TIED:
        dequantized = _logits(back, ids, mask)
        assert np.abs(dequantized[real] - ours[real]).max() <= 1e-4 * np.abs(ref[real]).max()


@pytest.mark.parametrize("name", ["tied", "qwen3", "gemma3", "phi3"])  # qwen2 = llama + biases: logits test
def test_an_int8_model_generates_its_own_greedy_tokens_through_the_kv_cache(tiny_models, name):
    int8, _ = jaxlm.load_pretrained(tiny_models / name, quantize="int8")
    prompts = [[5, 9, 31, 7], [11, 3, 200]]
    result = jaxlm.generate(int8, None, prompts, max_new_tokens=6, stop_at_eos=False)
    assert [len(t) for t in result.token_ids] == [6, 6]
    # the cached decode agrees with a full forward pass
    for prompt, tokens in zip(prompts, result.token_ids, strict=False):
        logits = _logits(int8, [prompt + tokens[:-1]])[0, len(prompt) - 1:]
        assert logits.argmax(-1).tolist() == tokens


def test_decode_step_reads_int8_weights_without_a_float_copy(tiny_models):
    int8, _ = jaxlm.load_pretrained(tiny_models / "tied", quantize="int8")
    attention, mlp = int8.layers[0].self_attn, int8.layers[0].mlp
    # Layers reading one input share one stacked matrix (one matmul after XLA's CSE): q/k/v, gate/up.
    assert attention.q_proj.matrix is attention.k_proj.matrix is attention.v_proj.matrix
    assert mlp.gate_proj.matrix is mlp.up_proj.matrix and mlp.down_proj.matrix is not mlp.up_proj.matrix
    graphdef, state = nnx.split(int8)
    cache = int8.init_cache(1, 32)

    def step(state, ids, positions, cache):
        return nnx.merge(graphdef, state)(ids, positions=positions, cache=cache)

    ones = jnp.ones((1, 1), jnp.int32)
    hlo = jax.jit(step).lower(state, ones, ones, cache).compile().as_text()
    # The MLP's weights are int8 [224, 64] (gate and up) and [64, 112] (down): no wider copy may exist.
    for dtype in ("f32", "bf16", "s32", "s16"):
        for shape in ("[224,64]", "[64,224]", "[112,64]", "[64,112]"):
            assert f"{dtype}{shape}" not in hlo, f"{dtype}{shape} materialised"
    assert "s8[224,64]" in hlo and "s8[64,112]" in hlo


def test_lora_must_be_merged_before_quantizing(tiny_models):
    from jaxlm.models.lora import apply_lora

    model, _ = jaxlm.load_pretrained(tiny_models / "tied")
    apply_lora(model, ["q"], rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="merge LoRA"):
        quantize_int8(model)
    with pytest.raises(ValueError, match="only 'int8'"):
        jaxlm.load_pretrained(tiny_models / "tied", quantize="int4")


def test_generate_cli_takes_quantize_int8(tmp_path, capsys):
    from jaxlm.sampling.cli import main
    from test_sampling_api import tiny_chat_checkpoint

    folder = str(tiny_chat_checkpoint(tmp_path / "chat"))
    code = main(["--model", folder, "--prompt", "hello", "--chat", "--max-new-tokens", "5", "--ignore-eos",
                 "--quantize", "int8", "--compile-cache", "none"])
    out, err = capsys.readouterr()
    model, tokenizer = jaxlm.load_pretrained(folder, quantize="int8")
    expected = jaxlm.generate(model, tokenizer, "hello", max_new_tokens=5, chat=True, stop_at_eos=False)
    assert code == 0 and out == expected.texts[0] + "\n" and "5 new tokens" in err


def test_a_prompt_tuned_model_keeps_its_virtual_tokens_in_int8(tiny_models):
    from jaxlm.models.prompt_tuning import apply_prompt_tuning, virtual_token_ids
    from jaxlm.models.quant import Int8PromptTunedEmbed

    model, _ = jaxlm.load_pretrained(tiny_models / "tied")
    apply_prompt_tuning(model, 3, seed=1)
    int8 = nnx.clone(model)
    quantize_int8(int8)
    assert isinstance(int8.embed_tokens, Int8PromptTunedEmbed)  # the tied head goes int8 as well
    assert virtual_token_ids(int8) == virtual_token_ids(model)
    ids = [virtual_token_ids(model) + [5, 9, 31, 7]]
    ours, ref = _logits(int8, ids), _logits(model, ids)
    assert np.abs(ours - ref).max() <= 0.02 * np.abs(ref).max()
    np.testing.assert_array_equal(np.asarray(dequantize(int8).embed_tokens.virtual_tokens[...]),
                                  np.asarray(model.embed_tokens.virtual_tokens[...]))
    # The other order would drop the int8 head: refused with what to do instead.
    quantized, _ = jaxlm.load_pretrained(tiny_models / "tied", quantize="int8")
    with pytest.raises(ValueError, match="before quantizing"):
        apply_prompt_tuning(quantized, 3)


def test_synth_takes_quantize_int8(tmp_path):
    from jaxlm.models.quant import is_quantized
    from jaxlm.synth.cli import build_parser, config_from_args
    from jaxlm.synth.generator import Generator
    from test_sampling_api import tiny_chat_checkpoint

    args = build_parser().parse_args(["self-instruct", "--out", str(tmp_path / "out"), "--quantize", "int8"])
    config = config_from_args(args)
    assert config.quantize == "int8"
    assert is_quantized(Generator(str(tiny_chat_checkpoint(tmp_path / "chat")), quantize=config.quantize).model)


def test_generate_cli_runs_a_prompt_tuning_adapter_in_int8(tmp_path, capsys):
    from jaxlm.hf.peft import load_prompt_tuning_adapter, save_prompt_tuning_adapter
    from jaxlm.models.prompt_tuning import apply_prompt_tuning
    from jaxlm.sampling.cli import main
    from test_sampling_api import tiny_chat_checkpoint

    folder = str(tiny_chat_checkpoint(tmp_path / "chat"))
    tuned, _ = jaxlm.load_pretrained(folder)
    apply_prompt_tuning(tuned, 2, seed=3)
    adapter = save_prompt_tuning_adapter(tuned, str(tmp_path / "adapter"))
    code = main(["--model", folder, "--adapter", adapter, "--quantize", "int8", "--prompt", "hello",
                 "--max-new-tokens", "4", "--ignore-eos", "--compile-cache", "none"])
    out, _ = capsys.readouterr()
    model, tokenizer = jaxlm.load_pretrained(folder)
    load_prompt_tuning_adapter(model, adapter)
    quantize_int8(model)
    expected = jaxlm.generate(model, tokenizer, "hello", max_new_tokens=4, stop_at_eos=False)
    assert code == 0 and out == expected.texts[0] + "\n"
