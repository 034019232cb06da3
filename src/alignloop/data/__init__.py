"""Corpora, prompt sets and the built-in story generator."""
