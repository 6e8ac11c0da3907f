"""``RobustS3DIS``: the stock S3DIS loader with a first-run conversion that works.

The stock ``S3DIS`` reads ``dataset_path/original_pkl/*.pkl`` and builds those
files from the raw annotations only if the folder does not exist yet, with a
conversion that is broken on pandas 3, on partial downloads and on the
corrupted rows of the real dataset. This subclass converts every raw room
missing from the cache with ``convert.convert_s3dis`` before the stock
``__init__`` runs, so the stock code finds a complete cache and the stock
``S3DISSplit`` reads it unchanged.
"""
from pathlib import Path

from open3d._ml3d.datasets.s3dis import S3DIS
from open3d._ml3d.utils import DATASET

from .convert import convert_s3dis

TEST_SPLITS = ('test', 'testing', 'val', 'validation')
TRAIN_SPLITS = ('train', 'training')


class RobustS3DIS(S3DIS):
    """S3DIS whose cache is completed on construction.

    Same arguments as the stock ``S3DIS``, plus:
        convert_workers: processes converting raw rooms, default os.cpu_count().
    """

    def __init__(self, dataset_path, name='RobustS3DIS', convert_workers=None,
                 **kwargs):
        if dataset_path is None:
            raise ValueError('RobustS3DIS needs dataset_path: the folder '
                             'holding Area_1 ... Area_6.')
        convert_s3dis(dataset_path, workers=convert_workers)
        super().__init__(dataset_path=dataset_path, name=name,
                         convert_workers=convert_workers, **kwargs)
        # The stock glob returns the file system's order.
        self.all_files = sorted(self.all_files)

    @staticmethod
    def create_ply_files(dataset_path, class_names):
        """The stock entry point of the conversion, routed to ours.

        ``class_names`` is ignored: the stock label_to_names is always used.
        """
        convert_s3dis(dataset_path)

    def get_split_list(self, split):
        """Pkl paths of ``split``, the test area matched on the file name.

        The stock code looks for 'Area_N' anywhere in the path, so a dataset
        stored under e.g. ``/data/Area_5_backup/`` puts every room in the test
        split; here only ``Area_N_<room>.pkl`` files are in it.
        """
        prefix = f'Area_{self.cfg.test_area_idx}_'
        is_test = [Path(f).name.startswith(prefix) for f in self.all_files]
        if split in TEST_SPLITS:
            return [f for f, test in zip(self.all_files, is_test) if test]
        if split in TRAIN_SPLITS:
            return [f for f, test in zip(self.all_files, is_test) if not test]
        if split == 'all':
            return list(self.all_files)
        raise ValueError(f'Invalid split {split!r}: use one of '
                         f'{TRAIN_SPLITS + TEST_SPLITS + ("all",)}')


DATASET._register_module(RobustS3DIS)
