"""Command lines: main.py (train), test.py (evaluate), extract_features.py."""
