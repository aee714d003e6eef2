"""Measures of how tasks help each other during training (JAX side); see ``tag``."""
