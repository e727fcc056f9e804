"""Model definitions (Flax Linen); the rest of mlrobust sees only apply functions."""
