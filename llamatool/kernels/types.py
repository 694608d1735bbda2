"""ggml type ids as plain ints, for kernels that specialize on them at compile time.

The ids are ggml's own (gguf-py's GGMLQuantizationType); the registry
(llamatool.quants.registry) is the place for everything else about a type.
"""

F32 = 0
F16 = 1
Q4_0 = 2
Q4_1 = 3
Q5_0 = 6
Q5_1 = 7
Q8_0 = 8
Q2_K = 10
Q3_K = 11
Q4_K = 12
Q5_K = 13
Q6_K = 14
IQ2_XXS = 16
IQ2_XS = 17
IQ3_XXS = 18
IQ1_S = 19
IQ4_NL = 20
IQ3_S = 21
IQ2_S = 22
IQ4_XS = 23
IQ1_M = 29
BF16 = 30
TQ1_0 = 34
TQ2_0 = 35

#: types whose weights meet an activation quantized in 32-value blocks (ggml's Q8_0 / Q8_1)
Q8_0_ACTIVATION = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL)
#: types whose weights meet an activation quantized in 256-value blocks (ggml's Q8_K)
Q8_K_ACTIVATION = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, TQ1_0, TQ2_0, IQ2_XXS, IQ3_S, IQ2_XS, IQ3_XXS, IQ2_S, IQ1_S, IQ1_M)
#: types read as floats (ggml rounds the activation to the weight's type first)
FLOAT_TYPES = (F32, F16, BF16)
#: every type the forward pass can multiply by
SUPPORTED = FLOAT_TYPES + Q8_0_ACTIVATION + Q8_K_ACTIVATION
