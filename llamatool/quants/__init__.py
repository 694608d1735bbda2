"""ggml tensor types: the registry (registry.py) and one module of kernels per family."""

from .registry import GGMLType, all_types, dequantize, ggml_type, quantize

__all__ = ["GGMLType", "all_types", "ggml_type", "quantize", "dequantize"]
