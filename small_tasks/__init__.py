"""The seed papers' theory experiments, one subpackage per family, each task with its theory and checks.

- ``composition``: group composition and Alternating Gradient Flows (sequential composition, modular
  addition, the diagonal linear network, composition depth);
- ``linear``: linear-network dynamics (λ-balanced networks, get rich quick, the quasi-homogeneous margin);
- ``sgd``: the symmetries and noise of SGD (conservation laws, the GPT's symmetries, stochastic
  collapse, the limiting dynamics);
- ``attention``: the paper's mechanism, the q·k saddle of one attention layer and what bQ does to it;
- ``toolkit``: what the families share: the task base classes and their checks, per-step records,
  plateau detection, the discrete-step conservation laws, plots.

Tasks are registered by name in ``tasks.TASKS``; ``python -m eval.verify`` measures their pass rates.
"""
