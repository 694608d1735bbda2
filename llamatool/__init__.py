"""llamatool: LLaMA-family models on the CPU, the llama.cpp way, in Python.

    from llamatool import Model
    model = Model.load("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    print(model.generate("The capital of France is", max_tokens=16).text)

Heavy modules (numba, the kernels) load only when first used.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Model":
        from .model import Model

        return Model
    raise AttributeError(f"module 'llamatool' has no attribute {name!r}")
