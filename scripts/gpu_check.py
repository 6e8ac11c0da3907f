#!/usr/bin/env python
"""What has to hold on a GPU (the NCM term, then the training pipeline).

Thin wrapper of `ncm_plugin.tools.gpu_check`; installed as the command
`ncm-gpu-check`. On a machine with torch alone, from the repository root:
`python3 scripts/gpu_check.py --part term --out OUT`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.gpu_check import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
