"""The paper's mechanism in one attention layer: the q·k saddle from small initialization and what bQ does
to it."""
