#!/usr/bin/env python
"""Train or test with Open3D-ML and the NCM plugin (Open3D-ML's run_pipeline).

Thin wrapper of `ncm_plugin.tools.runner`; installed as the command `ncm-run`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.runner import main  # noqa: E402

if __name__ == '__main__':
    main()
