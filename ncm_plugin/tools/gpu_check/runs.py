"""Training runs of the pipeline part, in a child process: a hang or a crash
(the watchdog ends a hung run with os._exit) then costs the runs of that
child, not the report.

    python -m ncm_plugin.tools.gpu_check.runs JOB.json

JOB.json: {"results": path, "runs": [{"name", "folder", "argv",
"weights"}]}. Each run is scripts/run_pipeline.py's main(argv), in the
child's working folder (KPConv's ./kernels, generated once); after each,
the results file gets {name: {"ok", "seconds", "error", "timings",
"weights"}}: the pipeline's
epoch_timings, and with "weights" the path of the final state_dict (CPU).
"""
import json
import sys
import time
import traceback
from pathlib import Path


def run_one(run):
    from ..runner import main
    import torch
    folder = Path(run['folder'])
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {'ok': False, 'error': None, 'timings': [], 'weights': None}
    try:
        pipeline = main(run['argv'])
        result['timings'] = list(getattr(pipeline, 'epoch_timings', []))
        if run.get('weights'):
            path = folder / 'weights.pt'
            torch.save({k: v.detach().cpu() for k, v in
                        pipeline.model.state_dict().items()}, path)
            result['weights'] = str(path)
        result['ok'] = True
    except SystemExit as stop:
        result['error'] = f"exit {stop.code}"
    except Exception:  # noqa: BLE001  (reported to the parent)
        result['error'] = traceback.format_exc()[-2000:]
    result['seconds'] = time.perf_counter() - start
    return result


def main(job_path):
    job = json.loads(Path(job_path).read_text())
    results = {}
    for run in job['runs']:
        print(f"[gpu_check run] {run['name']} ...", flush=True)
        results[run['name']] = run_one(run)
        Path(job['results']).write_text(json.dumps(results, indent=1))
        status = 'ok' if results[run['name']]['ok'] else 'FAILED'
        print(f"[gpu_check run] {run['name']}: {status}", flush=True)


if __name__ == '__main__':
    main(sys.argv[1])
