"""`llamatool convert`: a Hugging Face checkpoint folder to GGUF.

Compatible with llama.cpp's convert_hf_to_gguf.py (same keys, values, tensor names,
Q/K permutation and, for f32/f16/bf16/q8_0, the same tensor bytes), without torch or
transformers: numpy reads the memory-mapped safetensors tensor by tensor.

    hparams.py            config.json as transformers' AutoConfig sees it
    tensor_files.py       safetensors headers, shards, one-tensor memory maps
    tensors.py            expected tensors, GGUF names, Q/K permutation (what a family holds
                          and its <arch>.* keys are declared in llamatool.arch)
    sentencepiece_model.py, vocab.py, pretokenizer.py, special_vocab.py   tokenizer.* keys
    general.py            general.* keys and the default file name
    outtype.py            --outtype: converter types or a llama-quantize preset
    stream.py             streaming tensor writer and progress bar
    pipeline.py           plan, then write;  report.py  what the command prints
"""

from .pipeline import ConvertOptions, Plan, convert_model, plan_conversion

__all__ = ["ConvertOptions", "Plan", "convert_model", "plan_conversion", "run_convert_command"]


def run_convert_command(folder, options: ConvertOptions) -> Plan:
    """The CLI's entry: convert (or plan) and print what happened."""
    from .report import print_plan, print_summary

    plan = convert_model(folder, options)
    if options.dry_run:
        print_plan(plan)
    else:
        print_summary(plan)
    return plan
