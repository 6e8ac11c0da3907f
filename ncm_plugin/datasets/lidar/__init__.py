"""Airborne LiDAR tiles (LAS/LAZ, ASPRS classes): reading and writing
(las.py), the grid conversion (convert.py), the settings that shape it
(settings.py) and the registered dataset LASDataset (loader.py)."""
