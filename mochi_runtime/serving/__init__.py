"""Serving helpers: starting a real tritonserver on the project's model repository."""
