#!/usr/bin/env python
"""Soak test of the training loop (hangs, with workers and under torchrun).

Thin wrapper of `ncm_plugin.tools.soak`; installed as the command `ncm-soak`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.soak import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
