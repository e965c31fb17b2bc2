"""What the small-task families share: the task base classes and the form of a check, per-step
records kept across a resume, plateau detection, the discrete-step conservation laws, plots."""
