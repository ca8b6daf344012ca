"""Custom TensorFlow kernels: the fused CPU attention (`fused_attention`)."""
