"""Generated benchmark data (the built-in `shapes` set)."""
