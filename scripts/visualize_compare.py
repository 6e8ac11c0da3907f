#!/usr/bin/env python
"""Baseline vs NCM on one test cloud (the paper's Fig. 3 and Fig. 4).

Thin wrapper of `ncm_plugin.tools.visualize_compare`; installed as the command `ncm-visualize-compare`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.visualize_compare import main  # noqa: E402

if __name__ == '__main__':
    main()
