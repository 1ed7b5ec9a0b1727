"""Pixel-mask datasets: reading, pairing, transforms and loaders."""
