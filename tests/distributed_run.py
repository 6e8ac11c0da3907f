"""scripts/run_pipeline.py's main under torchrun, plus what a test needs to
see from every rank: after training, each rank writes its own validation
confusion matrix (before the all-reduce), the reduced one and a digest of
its model's weights to OUT/rank<RANK>.json.

    torchrun --standalone --nproc_per_node 2 tests/distributed_run.py OUT torch -c ...
"""
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncm_plugin.tools.runner import main  # noqa: E402


def weights_digest(model):
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

if __name__ == '__main__':
    out = Path(sys.argv[1])
    pipeline = main(sys.argv[2:])
    report = {'rank': pipeline.ranks.rank,
              'world_size': pipeline.ranks.world_size,
              'local_valid': pipeline.local_confusion['valid'].tolist(),
              'reduced_valid': [list(map(int, row)) for row in
                                pipeline.metric_val.confusion_matrix],
              'weights': weights_digest(pipeline.model)}
    (out / f"rank{os.environ.get('RANK', 0)}.json").write_text(
        json.dumps(report))
