"""Mochi's networks and their configs: the asymmetric DiT, the VAE decoder (whole and tiled), the T5 text encoder."""
