"""The symmetries and noise of SGD: conservation laws (on toy networks and on the GPT), stochastic
collapse, the limiting dynamics."""
