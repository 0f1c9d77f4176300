"""Datasets: readers for user data, split lookup, and the built-in synthetic benchmark."""
