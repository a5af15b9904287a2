"""ism3d: text to 3D Gaussian Splatting by Interval Score Matching."""
__version__ = "0.1.0"
