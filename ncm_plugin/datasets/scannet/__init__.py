"""ScanNet v2, 20 classes: ScanNet20 (loader.py), raw scans -> arrays
(convert.py) and synthetic scans in the raw layout (synthetic.py)."""
