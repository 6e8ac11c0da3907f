#!/usr/bin/env python
"""Convert the raw S3DIS rooms into the original_pkl cache the loaders read.

Thin wrapper of `ncm_plugin.tools.preprocess_s3dis`; installed as the command `ncm-preprocess-s3dis`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.preprocess_s3dis import main  # noqa: E402

if __name__ == '__main__':
    main()
