"""MMEB-V1: the 36-dataset registry, loading and validation, encoding, runner and report."""
