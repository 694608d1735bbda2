"""LoRA adapters: convert a PEFT adapter to GGUF, apply adapters at run time, merge them.

    convert.py    `llamatool convert-lora`: PEFT folder -> GGUF adapter (convert_lora_to_gguf.py)
    adapter.py    a GGUF adapter read and checked against a base model; the low-rank tables
                  the forward pass adds (y = W.x + sum scale*alpha/r * B.(A.x))
    export.py     `llamatool export-lora`: base + adapters merged (llama-export-lora)
"""
