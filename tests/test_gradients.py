"""Full fine-tuning's gradients: every linear layer's backward pass is written out for XLA:CPU's layouts
(`models.layers.dense_dot`), so each parameter's gradient is checked against torch's autograd on transformers'
model. (LoRA's adapters: tests/test_lora.py against peft.)"""

from __future__ import annotations

import jax
import numpy as np
import optax
import torch
import transformers
from flax import nnx

import jaxlm
from jaxlm.hf.export import hf_state_dict
from train_helpers import write_tiny_llama

IDS = np.array([[5, 17, 33, 9, 60, 2, 7, 8], [1, 40, 12, 3, 3, 90, 11, 6]], np.int32)


def test_every_parameter_gradient_is_the_one_torch_autograd_computes(tmp_path):
    base = write_tiny_llama(tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    ids = torch.tensor(IDS, dtype=torch.long)
    logits = hf(ids).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    want = {name: p.grad.numpy() for name, p in hf.named_parameters()}

    model, _ = jaxlm.load_pretrained(base)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(IDS)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], IDS[:, 1:]).mean()

    nnx.update(model, jax.jit(jax.grad(loss))(params))  # the model holds its gradients: HF names and layouts below
    got = {name: np.asarray(value) for name, value in hf_state_dict(model).items()}
    assert sorted(got) == sorted(want)
    for name, grad in want.items():
        # float32 summation order differs: within 1e-6 of the tensor's largest gradient here
        np.testing.assert_allclose(got[name], grad, rtol=1e-4, atol=1e-5 * float(np.abs(grad).max()), err_msg=name)
