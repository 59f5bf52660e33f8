"""Weights in: checkpoint layouts and key maps, the loaders that build each model on its device, the embedded tiny default."""
