#!/usr/bin/env python
"""One table of several test runs (the paper's Table 2).

Thin wrapper of `ncm_plugin.tools.compare_results`; installed as the command `ncm-compare-results`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.compare_results import main  # noqa: E402

if __name__ == '__main__':
    main()
