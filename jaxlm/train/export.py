"""The model a finished run leaves: the merged HF folder, the PEFT adapter, the GGUF file."""

from __future__ import annotations

import os


def write_exports(model, tokenizer, paths: dict, *, base_model: str, trainable, gguf_type: str = "") -> None:
    """`hf/`: the merged model transformers loads; `adapter/`: the PEFT adapter when LoRA or prompt tuning
    was used. A LoRA adapter carries every module that trained in full (`trainable` selects them: a new
    classifier, `model.train_only` layers) as PEFT `modules_to_save`. `model.gguf` (when `gguf_type` is
    set): the merged model for llama.cpp and Ollama."""
    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.peft import fully_trained_modules, save_peft_adapter, save_prompt_tuning_adapter
    from jaxlm.models.lora import has_lora
    from jaxlm.models.prompt_tuning import num_virtual_tokens

    export_pretrained(model, paths["hf"], tokenizer)
    if gguf_type:
        run_name = os.path.basename(os.path.dirname(os.path.abspath(paths["gguf"])))  # not "model"
        export_pretrained(model, paths["gguf"], tokenizer, gguf_type=gguf_type, name=run_name)
    if has_lora(model):
        save_peft_adapter(model, paths["adapter"], base_model=base_model,
                          modules_to_save=fully_trained_modules(model, trainable))
    elif num_virtual_tokens(model):
        save_prompt_tuning_adapter(model, paths["adapter"], base_model=base_model)
