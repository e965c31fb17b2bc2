"""Evaluation tools that read run dirs: validation loss, logic suite, alignment, reports, samples."""
