"""tg_jax: which tasks should be trained together (Standley et al. 2020, in JAX)."""
