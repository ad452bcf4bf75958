"""Sampler behaviour on a tiny random Llama: filters, seeding, stopping, log-probs, compile reuse."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm
from hf_checkpoints import VOCAB, tiny_bert, tiny_gpt2, tiny_llama
from jaxlm.sampling import SamplingParams, loop
from jaxlm.sampling.logits import first_argmax, top_k_filter, top_p_filter

PROMPT = [5, 17, 42, 99, 7]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_llama(path)
    return jaxlm.load_pretrained(path)[0]


def next_token_probs(model, prompt, temperature=1.0):
    logits = model(jnp.asarray([prompt]))[0, -1]
    return np.asarray(jax.nn.softmax(logits / temperature))


def first_tokens(model, seeds=range(4), rows=64, **sampling):
    """The first sampled token of many identical rows over a few seeds."""
    tokens = []
    for seed in seeds:
        result = jaxlm.generate(model, None, [PROMPT] * rows, max_new_tokens=1, seed=seed, **sampling)
        tokens += [ids[0] for ids in result.token_ids]
    return np.array(tokens)


# --- the filters on hand-made logits ------------------------------------------------------


def test_first_argmax_is_argmax_ties_included():
    rng = np.random.RandomState(0)
    scores = rng.randn(5, 1000).astype(np.float32)
    scores[1, [7, 400]] = 10.0  # a tie: the first index wins, as with argmax
    scores[2] = 0.0
    scores[3, -1] = 50.0
    np.testing.assert_array_equal(first_argmax(jnp.asarray(scores)), np.argmax(scores, axis=-1))


def test_top_k_filter_keeps_the_k_largest_logits():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    kept = np.isfinite(np.asarray(top_k_filter(logits, 2)))
    np.testing.assert_array_equal(kept, [[False, True, False, True]])


def test_top_p_filter_keeps_the_smallest_set_reaching_p():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))

    def kept(p):
        return np.isfinite(np.asarray(top_p_filter(logits, jnp.float32(p))))[0].tolist()

    assert kept(0.8) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert kept(0.81) == [False, True, True, True]
    assert kept(0.1) == [False, True, False, False]  # the top token always stays


# --- sampled distributions -------------------------------------------------------------------


def test_top_k_samples_never_leave_the_k_most_likely_tokens(model):
    allowed = set(np.argsort(next_token_probs(model, PROMPT))[-3:].tolist())
    sampled = set(first_tokens(model, temperature=2.0, top_k=3).tolist())
    assert sampled <= allowed
    assert len(sampled) > 1  # it really samples


def test_top_p_samples_never_leave_the_nucleus(model):
    probs = next_token_probs(model, PROMPT, temperature=2.0)
    order = np.argsort(probs)[::-1]
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[mass_before < 0.5].tolist())
    sampled = set(first_tokens(model, temperature=2.0, top_p=0.5).tolist())
    assert sampled <= nucleus
    assert len(sampled) > 1 and len(nucleus) < VOCAB // 2


def test_temperature_scales_the_logits_before_sampling(model):
    logits = np.asarray(model(jnp.asarray([PROMPT]))[0, -1])
    second, first = np.argsort(logits)[-2:]
    # Between the two most likely tokens, P(first) = sigmoid(gap / T): choose T so that it is 3/4.
    temperature = float((logits[first] - logits[second]) / np.log(3.0))
    sampled = first_tokens(model, seeds=range(8), temperature=temperature, top_k=2)
    share = np.mean(sampled == first)
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / len(sampled))  # 512 draws; T=1 would give ~0.5


def test_same_seed_repeats_samples_and_another_seed_changes_them(model):
    def run(seed):
        return jaxlm.generate(model, None, [PROMPT], 16, temperature=1.0, seed=seed).token_ids

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_streaming_yields_the_same_tokens_as_one_call_in_prompt_order(model):
    prompts = [PROMPT, [8, 9]]  # the shorter prompt is batched first; the callback still gets caller order
    chunks = []
    sampling = dict(max_new_tokens=10, temperature=1.0, seed=1, stop_at_eos=False)
    streamed = jaxlm.generate(model, None, prompts, on_tokens=chunks.append, stream_every=3, **sampling)
    whole = jaxlm.generate(model, None, prompts, **sampling)
    assert streamed.token_ids == whole.token_ids
    assert [[t for chunk in chunks for t in chunk[row]] for row in range(2)] == whole.token_ids
    assert len(chunks) > 2


# --- stopping and outputs --------------------------------------------------------------------


def test_max_new_tokens_bounds_every_row(model):
    result = jaxlm.generate(model, None, [PROMPT, PROMPT[:2]], max_new_tokens=7, stop_at_eos=False)
    assert [len(ids) for ids in result.token_ids] == [7, 7]
    assert result.finish_reasons == ["length", "length"]
    assert result.new_tokens == 14


def test_streaming_sends_nothing_after_a_row_stops(model):
    free = jaxlm.generate(model, None, [PROMPT], max_new_tokens=10, stop_at_eos=False).token_ids[0]
    chunks = []
    stopped = jaxlm.generate(model, None, [PROMPT, [8, 9]], max_new_tokens=10, stop_token_ids=[[free[1]], []],
                             stop_at_eos=False, on_tokens=chunks.append, stream_every=2)
    assert [t for chunk in chunks for t in chunk[0]] == stopped.token_ids[0] == free[: free.index(free[1]) + 1]


def test_each_row_stops_at_its_own_stop_ids(model):
    prompts = [PROMPT, [8, 9, 10]]
    free = jaxlm.generate(model, None, prompts, max_new_tokens=10, stop_at_eos=False).token_ids
    stops = [[free[0][2]], [free[1][5]]]
    stopped = jaxlm.generate(model, None, prompts, max_new_tokens=10, stop_at_eos=False, stop_token_ids=stops)
    # the stop token may occur earlier than chosen
    first = [row.index(s[0]) for row, s in zip(free, stops, strict=False)]
    assert stopped.token_ids == [free[0][: first[0] + 1], free[1][: first[1] + 1]]
    assert stopped.finish_reasons == ["stop", "stop"]


def test_logprobs_are_the_model_log_probabilities_of_the_chosen_tokens(model):
    result = jaxlm.generate(model, None, [PROMPT], 6, temperature=1.0, seed=2, stop_at_eos=False,
                            return_logprobs=True, top_k=20)
    generated = result.token_ids[0]
    logits = model(jnp.asarray([PROMPT + generated]))[0, len(PROMPT) - 1 : -1]
    expected = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(generated)[:, None], axis=-1)[:, 0]
    chex.assert_trees_all_close(jnp.asarray(result.logprobs[0]), expected, atol=1e-4)


# --- compiled programs are reused ------------------------------------------------------------


def test_prompt_lengths_in_one_bucket_share_compiled_programs(model):
    loop._executables.clear()  # other tests in this process may have compiled these buckets already
    jaxlm.generate(model, None, [PROMPT], 8)  # 5 tokens: bucket 16
    compiles = loop.STATS.compiles
    again = jaxlm.generate(model, None, [list(range(3, 14))], 8)  # 11 tokens: same bucket
    assert loop.STATS.compiles == compiles and again.compile_seconds == 0.0
    longer = jaxlm.generate(model, None, [list(range(3, 23))], 8)  # 20 tokens: bucket 24
    assert loop.STATS.compiles == compiles + 2 and longer.compile_seconds > 0  # a prefill and a decode


def test_new_temperature_or_top_p_does_not_recompile(model):
    jaxlm.generate(model, None, [PROMPT], 8, temperature=0.7, top_p=0.9)
    compiles = loop.STATS.compiles
    jaxlm.generate(model, None, [PROMPT], 8, temperature=1.3, top_p=0.5, seed=5)
    assert loop.STATS.compiles == compiles


def test_buckets_round_up_to_few_sizes():
    assert [loop.bucket(n) for n in (1, 16, 17, 64, 65, 1000)] == [16, 16, 32, 64, 128, 1024]
    lengths = (1, 16, 17, 24, 25, 33, 48, 49, 65, 97, 700)
    assert [loop.prompt_bucket(n) for n in lengths] == [16, 16, 24, 24, 32, 48, 48, 64, 96, 128, 768]


# --- input errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0.0)]
)
def test_invalid_sampling_settings_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_text_prompt_without_tokenizer_is_rejected(model):
    with pytest.raises(ValueError, match="no tokenizer"):
        jaxlm.generate(model, None, ["hello"])


def test_gpt2_prompt_beyond_its_positions_is_rejected(tmp_path):
    tiny_gpt2(tmp_path)  # n_positions=128
    gpt2, _ = jaxlm.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="n_positions"):
        jaxlm.generate(gpt2, None, [list(range(3, 103))], max_new_tokens=40)


def test_bert_cannot_generate(tmp_path):
    tiny_bert(tmp_path)
    bert, _ = jaxlm.load_pretrained(tmp_path)
    with pytest.raises(TypeError, match="not a causal LM"):
        jaxlm.generate(bert, None, [PROMPT])
