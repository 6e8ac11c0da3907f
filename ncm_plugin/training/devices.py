"""The device a run asks for, refused when this torch cannot give it, and
the one line that says at the start of a run what it got.

Open3D-ML's BasePipeline turns `device: cuda` into the CPU when torch has no
CUDA, without a word: a run meant for a GPU then trains for days on the CPU.
Here `cuda` (or `gpu`, Open3D-ML's spelling) must be there or the run stops
before anything is built.
"""
import torch


class DeviceError(ValueError):
    """A device this torch build or machine does not have."""


def require_device(device):
    """torch.device for a config's or a command line's device string.

    device: 'cpu', 'cuda', 'cuda:N', 'gpu' (= cuda) or None (cuda when
    available, else cpu, as Open3D-ML). Raises DeviceError naming the
    installed torch build and the fix when CUDA is asked for and missing.
    """
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    name = str(device)
    if name == 'gpu' or name.startswith('gpu:'):
        name = 'cuda' + name[3:]
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"device {device!r} is not a device torch knows "
                          f"({error}); use cpu or cuda") from None
    if chosen.type != 'cuda':
        return chosen
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = (f"the installed torch {torch.__version__} is a CPU-only "
                   f"build (torch.version.cuda is None)")
        else:
            why = (f"the installed torch {torch.__version__} (CUDA "
                   f"{torch.version.cuda}) finds no GPU: no NVIDIA driver, or "
                   f"CUDA_VISIBLE_DEVICES hides every device")
        raise DeviceError(f"device {device!r} asks for CUDA, but {why}; "
                          f"install the CUDA build with `bash "
                          f"scripts/install.sh --cuda`, or train on the CPU "
                          f"with --device cpu")
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise DeviceError(f"device {device!r}: this machine has {count} CUDA "
                          f"device(s), 0..{count - 1}")
    return chosen


def device_report(device):
    """One line for the log of a run: the device, torch and its CUDA,
    Open3D and its CUDA, and on CUDA the GPU's name and memory."""
    device = torch.device(device)
    parts = [f"device {device}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             _open3d_build()]
    if device.type == 'cuda':
        index = device.index if device.index is not None else \
            torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        parts.append(f"GPU {index}: {properties.name}, {total / 2**30:.1f} GiB, "
                     f"{free / 2**30:.1f} GiB free")
    return '; '.join(parts)


def _open3d_build():
    """'open3d 0.19.0 (CUDA 12.1)', or why it cannot be said."""
    try:
        import open3d
    except (ImportError, OSError):  # not installed, or its libraries missing
        return "open3d not importable"
    config = getattr(open3d, '_build_config', None) or {}
    cuda = config.get('CUDA_VERSION') if config.get('BUILD_CUDA_MODULE') \
        else None
    return f"open3d {open3d.__version__} (CUDA {cuda or 'none'})"
