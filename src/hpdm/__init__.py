"""hpdm: Hierarchical Patch Diffusion Models for high-resolution video generation."""

__version__ = "0.1.0"
