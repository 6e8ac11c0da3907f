"""S3DIS raw-to-cache conversion: the plugin's against Open3D-ML's own.

Both write `original_pkl/Area_N_<room>.pkl` from the same generated rooms.
The stock `S3DIS.create_ply_files` calls `pandas.read_csv(...,
delim_whitespace=True)`, gone in pandas 3, so it runs in another interpreter
with pandas 2 (`--stock-python`, e.g. a throwaway venv with open3d-cpu 0.20,
torch and pandas<3). It converts the 272 rooms listed in Open3D-ML's
`_resources/s3dis_annotation_paths.txt`; the benchmark process points the
module at a list of the generated rooms instead (the module's `__file__`,
in that process only; nothing on disk is changed). Each side is timed inside
its own process (interpreter start and imports left out), on files already
in the page cache, and the two caches are checked to hold the same points.
"""
import json
import os
import pickle
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ...datasets.s3dis.convert import CACHE_DIR, convert_s3dis, find_rooms
from ...datasets.s3dis.synthetic import write_demo_s3dis

STOCK_DRIVER = r'''
import json, sys, time
from pathlib import Path
import open3d._ml3d.datasets.s3dis as stock
raw, fake_module = sys.argv[1], sys.argv[2]
stock.__file__ = fake_module  # its annotation list: the generated rooms
start, cpu = time.perf_counter(), time.process_time()
stock.S3DIS.create_ply_files(raw, stock.S3DIS.get_label_to_names())
print(json.dumps({"seconds": time.perf_counter() - start,
                  "cpu": time.process_time() - cpu}))
'''


def raw_rooms(root, areas=(1, 2, 3, 4, 5, 6), rooms_per_area=4, seed=0):
    """Generated raw rooms; (rooms, lines, bytes)."""
    write_demo_s3dis(root, areas=areas, rooms_per_area=rooms_per_area,
                     seed=seed)
    rooms = find_rooms(root)
    files = [f for room in rooms for f in (room / 'Annotations').glob('*.txt')]
    lines = sum(f.read_bytes().count(b'\n') for f in files)  # also warms
    return rooms, lines, sum(f.stat().st_size for f in files)


def _cpu_seconds():
    """CPU time of this process and of its finished children."""
    times = os.times()
    return sum(times[:4])


def time_plugin(root, workers):
    """(wall, CPU) seconds of convert_s3dis(overwrite=True) with `workers`
    processes."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    convert_s3dis(root, workers=workers, overwrite=True)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def time_stock(root, rooms, python):
    """(wall, CPU) seconds of the stock create_ply_files, run by `python`
    (pandas 2)."""
    fake = Path(tempfile.mkdtemp(prefix='stock_s3dis_'))
    (fake / '_resources').mkdir()
    (fake / '_resources' / 's3dis_annotation_paths.txt').write_text(''.join(
        f'{room.relative_to(root)}/Annotations\n' for room in rooms))
    try:
        out = subprocess.run([python, '-c', STOCK_DRIVER, str(root),
                              str(fake / 's3dis.py')], check=True,
                             capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(fake)
    result = json.loads(out.strip().splitlines()[-1])
    return result['seconds'], result['cpu']


def same_points(cache_a, cache_b):
    """True when every room's [N, 7] rows are equal up to row order."""
    for path in sorted(Path(cache_a).glob('*.pkl')):
        a = pickle.loads(path.read_bytes())[0]
        b = pickle.loads((Path(cache_b) / path.name).read_bytes())[0]
        if a.shape != b.shape:
            return False
        a, b = (x[np.lexsort(x.T[::-1])] for x in (a, b))
        if not np.array_equal(a, b):
            return False
    return True


def run(args):
    root = Path(tempfile.mkdtemp(prefix='ncm_convert_')) / 's3dis'
    rooms, lines, size = raw_rooms(root, rooms_per_area=args.rooms_per_area)
    print(f"S3DIS conversion: {len(rooms)} generated rooms, {lines:,} points, "
          f"{size / 2**20:.0f} MiB of text (page cache warm), best of "
          f"{args.repeats}")
    results = {}
    if args.stock_python:
        results['stock (pandas 2)'] = min(
            time_stock(root, rooms, args.stock_python)
            for _ in range(args.repeats))
        shutil.move(root / CACHE_DIR, root.parent / 'stock_pkl')
    else:
        print("  stock: skipped (give --stock-python, an interpreter with "
              "open3d 0.20 and pandas<3)")
    for workers in sorted({1, args.workers}):
        results[f'plugin, {workers} process(es)'] = min(
            time_plugin(root, workers) for _ in range(args.repeats))
    for name, (seconds, cpu) in results.items():
        print(f"  {name:<26s} {seconds:7.2f} s  {lines / seconds:12,.0f} "
              f"points/s  (CPU {cpu:.2f} s: {lines / cpu:12,.0f} points per "
              f"CPU-second)")
    if args.stock_python:
        stock = results['stock (pandas 2)'][0]
        for name, (seconds, _) in results.items():
            if name.startswith('plugin'):
                print(f"  {name}: {stock / seconds:.1f}x the stock speed")
        print(f"  same points in both caches: "
              f"{same_points(root / CACHE_DIR, root.parent / 'stock_pkl')}")
    shutil.rmtree(root.parent)
    return {name: lines / s for name, (s, _) in results.items()}
