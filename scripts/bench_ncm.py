#!/usr/bin/env python
"""What the NCM term costs (step overhead, scaling, throughput, conversion).

Thin wrapper of `ncm_plugin.tools.bench.step`; installed as the command `ncm-bench`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.bench.step import main  # noqa: E402

if __name__ == '__main__':
    main()
