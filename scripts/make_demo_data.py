#!/usr/bin/env python
"""Write a small synthetic dataset in the exact raw layout of a real one.

Thin wrapper of `ncm_plugin.tools.make_demo_data`; installed as the command `ncm-make-demo-data`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.make_demo_data import main  # noqa: E402

if __name__ == '__main__':
    main()
