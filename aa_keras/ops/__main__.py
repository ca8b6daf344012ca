"""`python -m aa_keras.ops`: compiles the fused attention kernel ahead of first use; prints its path."""

from aa_keras.ops import fused_attention

print(fused_attention.build())
