"""AREPAS: anomaly segmentation by edge-conditioned reconstruction and semantic patch scoring."""

__version__ = "0.1.0"
