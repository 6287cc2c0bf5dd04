"""The shared base of evaluation: metrics, embedding cache, resumable scoring, report writing, chart, arguments.

Imports only the floors below evaluation (``common``, ``data``); never one of the benchmark sub-packages.
"""
