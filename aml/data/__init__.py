"""Data: the data root, downloads, image loading, test/training sets, synthetic landmarks."""
