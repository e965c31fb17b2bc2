"""The GPT with symmetry-breaking attention biases, and its interop."""

from model.gpt import GPT, PRESETS, GPTConfig
from model.symmetry import BiasSpec, draw_biases

__all__ = ["GPT", "GPTConfig", "PRESETS", "BiasSpec", "draw_biases"]
