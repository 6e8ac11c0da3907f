#!/usr/bin/env python
"""Label every point of LAS/LAZ tiles with a trained model.

Thin wrapper of `ncm_plugin.tools.predict`; installed as the command
`ncm-predict`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.predict import main  # noqa: E402

if __name__ == '__main__':
    main()
