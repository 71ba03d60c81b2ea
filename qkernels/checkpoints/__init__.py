"""Quantized checkpoints of other tools, read into (and written from) models that run on the kernels.

    qkernels.checkpoints.gptq_format   AutoGPTQ / GPTQModel (qweight, qzeros, scales, g_idx)
    qkernels.checkpoints.awq_format    AutoAWQ's GEMM layout
    qkernels.checkpoints.gguf          llama.cpp's GGUF files (Q4_0, Q4_1, Q8_0, Q4_K; Q5_*, Q6_K as 8-bit)

Each maps its format exactly onto the canonical format of docs/numerics.md §1 (docs/checkpoints.md).
"""
