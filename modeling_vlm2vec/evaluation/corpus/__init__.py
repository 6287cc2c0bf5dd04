"""Corpus retrieval on a user's own BEIR-layout collection: loading and validation, then the resumable runner."""
