"""Evaluation protocols: the baseline (noise added offline) and, later, the real-world one."""
