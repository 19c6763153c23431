"""sircil: exemplar-based class-incremental learning with Self-Paced Imbalance Rectification."""

__version__ = "0.1.0"
