#!/usr/bin/env bash
# One-shot set-up on a fresh Debian/Ubuntu machine with Python 3.11:
# system libraries that `import open3d` needs, then a virtual environment in
# .venv with torch 2.13, Open3D 0.20 (with Open3D-ML), tensorboard and this
# package in editable mode.
#
#   bash scripts/install.sh            # CPU (open3d-cpu + torch 2.13.0+cpu)
#   bash scripts/install.sh --cuda     # GPU (open3d + torch 2.13.0+cu126)
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cpu
for arg in "$@"; do
  case "$arg" in
    --cuda) variant=cuda ;;
    --cpu) variant=cpu ;;
    *) echo "install.sh: unknown option '$arg' (use --cpu or --cuda)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if command -v apt-get >/dev/null; then
  # libusb/libgl/libgomp: import open3d; libvulkan1 + mesa: headless rendering;
  # xvfb + x11-apps (xwd): the comparison window opened and captured in tests.
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    libusb-1.0-0 libgl1 libgomp1 libvulkan1 mesa-vulkan-drivers \
    xvfb x11-apps >/dev/null
else
  echo "install.sh: no apt-get; install libusb-1.0, libGL, libgomp yourself" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$variant" = cuda ]; then
  .venv/bin/python -m pip install -q torch==2.13.0 \
    --index-url https://download.pytorch.org/whl/cu126
else
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e ".[$variant,test]"
.venv/bin/python -c "import open3d, open3d.ml.torch, torch, ncm_plugin; \
print('ok: open3d', open3d.__version__, '| torch', torch.__version__)"
