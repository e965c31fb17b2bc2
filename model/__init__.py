"""The GPT with symmetry-breaking attention biases, and its interop."""

from model.gpt import GPT, PRESETS, GPTConfig
from model.symmetry import MODES, BiasSpec, draw_biases

__all__ = ["GPT", "GPTConfig", "PRESETS", "MODES", "BiasSpec", "draw_biases"]
