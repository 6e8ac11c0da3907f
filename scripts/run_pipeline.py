#!/usr/bin/env python
"""Train or test with Open3D-ML and the NCM plugin (see ncm_plugin/runner.py).

    python scripts/run_pipeline.py torch -c ncm_kpconv_s3dis.yml \
        --dataset_path /data/Stanford3dDataset_v1.2_Aligned_Version
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.runner import main  # noqa: E402

if __name__ == '__main__':
    main()
