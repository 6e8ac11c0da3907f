#!/usr/bin/env python
"""Convert raw ScanNet v2 scans into the per-scene arrays the Scannet loaders read.

Thin wrapper of `ncm_plugin.tools.preprocess_scannet`; installed as the command `ncm-preprocess-scannet`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.preprocess_scannet import main  # noqa: E402

if __name__ == '__main__':
    main()
