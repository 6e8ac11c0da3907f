"""Airborne LiDAR tiles (LAS/LAZ, ASPRS classes): reading and writing
(las.py). The registered dataset and its grid conversion are to come."""
