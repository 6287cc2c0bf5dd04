"""MMEB-V2: the 78 image, video and visual-document tasks, their registry, scoring, runner and report."""
