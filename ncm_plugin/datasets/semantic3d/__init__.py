"""Semantic3D (reduced-8): RobustSemantic3D (loader.py), raw scans -> grid
cache (convert.py) and synthetic scans in the raw layout (synthetic.py)."""
