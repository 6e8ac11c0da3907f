#!/usr/bin/env python
"""Time a KPConv training step with and without the NCM term (ncm_plugin/bench.py).

    python scripts/bench_ncm.py [--config ncm_kpconv_s3dis.yml] [--device cuda]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.bench import main  # noqa: E402

if __name__ == '__main__':
    main()
