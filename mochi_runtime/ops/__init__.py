"""Kernels and numerics the models call: joint attention, fp8 linears and attention, fused QK-norm + RoPE."""
