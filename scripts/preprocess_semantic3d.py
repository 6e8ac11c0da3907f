#!/usr/bin/env python
"""Subsample raw Semantic3D scans once to the training grid and cache them as arrays.

Thin wrapper of `ncm_plugin.tools.preprocess_semantic3d`; installed as the command `ncm-preprocess-semantic3d`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.preprocess_semantic3d import main  # noqa: E402

if __name__ == '__main__':
    main()
