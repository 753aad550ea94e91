#!/usr/bin/env bash
# Installs the Debian 12 packages Phoenix needs, only those missing (idempotent): clang and
# its fuzzer runtime for `make fuzz`, spin for `make model-check` included.
# Usage: install_deps.sh [--torch] [--slurm]   (--torch adds python3-torch for the PyTorch
# comparison, --slurm slurm-wlm and munge for the SLURM test, tests/slurm)
# Runs apt-get directly as root, through sudo otherwise.
set -euo pipefail
pkgs=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
      libcli11-dev libdnnl-dev ocl-icd-opencl-dev zlib1g-dev libgtest-dev libbenchmark-dev
      dataset-fashion-mnist python3-matplotlib python3-numpy python3-h5py
      clang libclang-rt-14-dev spin)
# PyTorch links libblas.so.3: without OpenBLAS it gets the reference BLAS (10x slower).
for arg in "$@"; do
  case "$arg" in
    --torch) pkgs+=(python3-torch libopenblas0-pthread) ;;
    --slurm) pkgs+=(slurm-wlm munge) ;;
    *) echo "install_deps: unknown option $arg (accepted: --torch, --slurm)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
