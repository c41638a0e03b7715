import jax

# Closed-form checks compare float32 results to 1e-5; keep matrix products at
# full precision on accelerators too (the CPU already computes them so).
jax.config.update("jax_default_matmul_precision", "highest")
