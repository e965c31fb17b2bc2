"""The GPT with symmetry-breaking attention biases, and its interop."""

from model.gpt import GPT, PRESETS, GPTConfig
from model.symmetry import BiasDraws, BiasSpec, draw_biases

__all__ = ["GPT", "GPTConfig", "PRESETS", "BiasDraws", "BiasSpec", "draw_biases"]
