#!/usr/bin/env python
"""KL direction x target ablation (the paper's section 4.3).

Thin wrapper of `ncm_plugin.tools.ablate_kl`; installed as the command `ncm-ablate-kl`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.ablate_kl import main  # noqa: E402

if __name__ == '__main__':
    main()
