"""Group composition and Alternating Gradient Flows: groups and their Fourier transforms, AGF's
predictions, the composition tasks, modular addition, the diagonal linear network."""
