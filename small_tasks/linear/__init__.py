"""Linear-network dynamics: λ-balanced lazy and rich learning, get rich quick, the quasi-homogeneous
max-margin bias, with their closed forms."""
