#!/usr/bin/env python
"""Heatmaps of the target NCM and the baseline's and NCM model's predicted NCMs.

Thin wrapper of `ncm_plugin.tools.show_ncm`; installed as the command `ncm-show-ncm`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.show_ncm import main  # noqa: E402

if __name__ == '__main__':
    main()
