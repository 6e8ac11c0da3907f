#!/usr/bin/env bash
# One-shot set-up on a fresh Debian/Ubuntu machine with Python 3.11:
# system libraries that `import open3d` needs, then a virtual environment in
# .venv with torch 2.13, Open3D 0.20 (with Open3D-ML), tensorboard and this
# package in editable mode.
#
#   bash scripts/install.sh            # CPU: open3d-cpu==0.20.* + torch 2.13.0+cpu
#   bash scripts/install.sh --cuda     # GPU: open3d==0.20.*     + torch 2.13.0+cu126
#
# Each variant installs exactly its pair and replaces the other one, so it can
# be rerun over an existing .venv to switch between CPU and CUDA.
#
# Options:
#   --cpu / --cuda            the variant (default --cpu)
#   --torch-index URL         an extra pip index to find torch on (also the
#                             environment variable TORCH_INDEX_URL; the option
#                             wins). Default for --cuda:
#                             https://download.pytorch.org/whl/cu126; default
#                             for --cpu: pip's own configuration first (a
#                             mirror or wheel folder that has the CPU build),
#                             then https://download.pytorch.org/whl/cpu (PyPI
#                             itself has no torch 2.13.0+cpu).
#                             An empty URL means pip's configuration only.
#   --no-system-packages      skip the apt-get step
#
# Environment: PYTHON (default python3) creates the virtual environment;
# NCM_VENV (default .venv) is where it lives.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="use --cpu, --cuda, --torch-index URL or --no-system-packages"
variant=cpu
system_packages=yes
torch_index_option=unset
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) variant=cuda ;;
    --cpu) variant=cpu ;;
    --no-system-packages) system_packages=no ;;
    --torch-index=*) torch_index_option=${1#--torch-index=} ;;
    --torch-index)
      if [ $# -lt 2 ]; then
        echo "install.sh: --torch-index needs a URL" >&2; exit 2
      fi
      torch_index_option=$2; shift ;;
    *) echo "install.sh: unknown option '$1' ($usage)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$variant" = cuda ]; then
  open3d_wanted=open3d open3d_other=open3d-cpu torch_build=cu126
  default_index=https://download.pytorch.org/whl/cu126
else
  open3d_wanted=open3d-cpu open3d_other=open3d torch_build=cpu
  default_index=""
fi
if [ "$torch_index_option" != unset ]; then
  torch_index=$torch_index_option
else
  torch_index=${TORCH_INDEX_URL-$default_index}
fi

if [ "$system_packages" = yes ]; then
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
fi

PYTHON=${PYTHON:-python3}
VENV=${NCM_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q --upgrade pip

# open3d and open3d-cpu both own site-packages/open3d: never both in one
# environment. Where the other wheel is installed, uninstalling it deletes the
# shared files under the wanted one too (an older install.sh --cuda left both),
# so both go and the wanted one is installed afresh below.
if "$PY" -m pip show -q "$open3d_other" >/dev/null 2>&1; then
  "$PY" -m pip uninstall -y "$open3d_other" "$open3d_wanted"
fi

# The local label pins the build: `torch==2.13.0` is satisfied by any 2.13.0
# (PEP 440 ignores local labels), `torch==2.13.0+cu126` only by that build,
# so a CPU torch already in the environment is replaced. --extra-index-url,
# not --index-url: PyPI serves no local versions, so torch itself can only come
# from the named index, while its dependencies still resolve from the indexes
# pip is configured with (a mirror, a find-links directory).
torch_args=(-q "torch==2.13.0+$torch_build")
if [ -n "$torch_index" ]; then torch_args+=(--extra-index-url "$torch_index"); fi
torch_installed=no
if "$PY" -m pip install "${torch_args[@]}"; then
  torch_installed=yes
elif [ "$variant" = cpu ] && [ "$torch_index_option" = unset ] && \
    [ -z "${TORCH_INDEX_URL+set}" ]; then
  # No index named: pip's configuration had no CPU build; PyTorch's has.
  echo "install.sh: torch 2.13.0+cpu is not on pip's configured indexes;" \
    "trying https://download.pytorch.org/whl/cpu" >&2
  if "$PY" -m pip install "${torch_args[@]}" \
      --extra-index-url https://download.pytorch.org/whl/cpu; then
    torch_installed=yes
  fi
fi
if [ "$torch_installed" = no ]; then
  echo "install.sh: pip found no torch 2.13.0+$torch_build; name an index that" \
    "has it with --torch-index URL (or TORCH_INDEX_URL)," \
    "e.g. https://download.pytorch.org/whl/$torch_build" >&2
  exit 1
fi
"$PY" -m pip install -q -e ".[$variant,test]"
"$PY" -c "import open3d, open3d.ml.torch, torch, ncm_plugin; \
o3d_cuda = open3d._build_config['CUDA_VERSION'] or None; \
print('ok: open3d', open3d.__version__, '(CUDA', str(o3d_cuda) + ')', \
'| torch', torch.__version__, '(CUDA', str(torch.version.cuda) + ')')"
