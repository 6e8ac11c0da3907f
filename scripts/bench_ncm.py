#!/usr/bin/env python
"""What the NCM plugin costs (ncm_plugin/bench*.py).

    python scripts/bench_ncm.py [--config ncm_kpconv_s3dis.yml] [--device cuda]
    python scripts/bench_ncm.py --part scaling      # NCM time vs points, classes
    python scripts/bench_ncm.py --part throughput --config ncm_kpconv_demo.yml
    python scripts/bench_ncm.py --part convert --stock-python /tmp/pd2/bin/python
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.bench import main  # noqa: E402

if __name__ == '__main__':
    main()
