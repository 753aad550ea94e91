#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU lent for a few minutes (docs/perf.md "GPU").
#
#   gpu_check.sh pack          on the development machine: build Phoenix with CUDA, cuDNN and
#                              NCCL ($BUILD, default build/, sm_90), and pack into .gpu/ what the GPU machine
#                              lacks: the binaries, the shared libraries they need (not glibc,
#                              not the CUDA libraries), Open MPI's runtime (relocated with
#                              OPAL_PREFIX) and a 12,000-image subset of Fashion-MNIST.
#   gpu_check.sh device        on the GPU machine (run from the repo root with .gpu carried):
#                              runs the gpu tests, `phoenix bench kernels --device cuda`, a
#                              1-server 2-worker CUDA job (and a CPU one for comparison), and the
#                              same CNN in PyTorch CUDA; everything goes to $OUT (default
#                              ./gpu-out); each step is bounded, the whole under 8 minutes.
#
# Why pack here: the GPU machine's image has CUDA 13, cuDNN 9, NCCL 2 and PyTorch (pip wheels)
# but no MPI, HDF5, oneDNN or CLI11, and cannot install packages. The CUDA code is compiled here
# with the same CUDA 13 for sm_90 (H100/H200); on the machine the CUDA libraries come from its
# own toolkit and PyTorch's nvidia-* wheels (same major versions: cudart/cublas 13, cuDNN 9,
# NCCL 2).
set -uo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cd "$HERE"
PKG=.gpu
case "${1:-}" in
pack)
  set -e
  B=${BUILD:-build}
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DPHX_WITH_CUDA=ON -DPHX_WITH_CUDNN=ON \
        -DPHX_WITH_NCCL=ON -DCMAKE_CUDA_ARCHITECTURES=90 > /dev/null
  cmake --build "$B" -j "${JOBS:-2}" --target phoenix test_cuda_agreement test_nccl_group
  rm -rf "$PKG"; mkdir -p "$PKG/bin" "$PKG/lib" "$PKG/data" "$PKG/ompi"
  cp "$B"/bin/phoenix "$B"/tests/test_cuda_agreement "$B"/tests/test_nccl_group "$PKG/bin/"
  # Open MPI 4.1 runtime, relocatable: OPAL_PREFIX=$PKG/ompi finds its components and help files.
  OLIB=/usr/lib/x86_64-linux-gnu/openmpi
  mkdir -p "$PKG/ompi/bin" "$PKG/ompi/lib/x86_64-linux-gnu" "$PKG/ompi/share"
  cp -a "$OLIB" "$PKG/ompi/lib/x86_64-linux-gnu/"
  rm -rf "$PKG/ompi/lib/x86_64-linux-gnu/openmpi/include"
  cp -a /usr/share/openmpi "$PKG/ompi/share/"
  cp /usr/bin/orterun "$PKG/ompi/bin/mpirun"; cp /usr/bin/orted "$PKG/ompi/bin/"
  mkdir -p "$PKG/ompi/etc/openmpi"; cp /etc/openmpi/*.conf "$PKG/ompi/etc/openmpi/" 2>/dev/null || true
  # Every shared library the binaries and MPI components need, but glibc's and CUDA's.
  skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread|librt\.so|libcuda\.|libcudart|libcublas|libcudnn|libnccl|libnvidia)'
  for f in "$PKG"/bin/* /usr/bin/orterun /usr/bin/orted $(find "$OLIB/lib/openmpi3" -name '*.so'); do
    ldd "$f" 2>/dev/null | awk '$3 ~ /^\// {print $1, $3}'
  done | sort -u | while read -r name path; do
    echo "$name" | grep -Eq "$skip" || cp -L "$path" "$PKG/lib/$name"
  done
  # A subset of the data (the GPU machine has no Debian dataset; the tree that travels is small).
  /usr/bin/python3 - "$PKG/data" <<'PY'
import gzip, struct, sys
src, out = "/usr/share/datasets/fashion-mnist", sys.argv[1]
for name, keep in [("train", 12000), ("t10k", 2000)]:
    img = gzip.open(f"{src}/{name}-images-idx3-ubyte.gz").read()
    lab = gzip.open(f"{src}/{name}-labels-idx1-ubyte.gz").read()
    with gzip.open(f"{out}/{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(img[:4] + struct.pack(">I", keep) + img[8:16] + img[16:16 + keep * 784])
    with gzip.open(f"{out}/{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(lab[:4] + struct.pack(">I", keep) + lab[8:8 + keep])
PY
  # one compressed archive: the tree that travels to the GPU machine is limited to 64 MiB
  tar -C "$PKG" -cf - bin lib data ompi | xz -T0 -6 > "$PKG.tar.xz.tmp"
  rm -rf "$PKG"; mkdir -p "$PKG"; mv "$PKG.tar.xz.tmp" "$PKG/phoenix-gpu.tar.xz"
  du -sh "$PKG/phoenix-gpu.tar.xz"
  echo "packed $PKG/phoenix-gpu.tar.xz: carry .gpu (device run ... carry [\".gpu\"]) and run apps/scripts/gpu_check.sh device"
  ;;
device)
  OUT=${OUT:-$HERE/gpu-out}; mkdir -p "$OUT"
  [ -f "$PKG/phoenix-gpu.tar.xz" ] || { echo "gpu_check: $PKG/phoenix-gpu.tar.xz missing: run 'gpu_check.sh pack' on the development machine and carry .gpu" >&2; exit 2; }
  U=${TMPDIR:-/tmp}/phoenix-gpu
  rm -rf "$U"; mkdir -p "$U"
  xz -dc "$PKG/phoenix-gpu.tar.xz" | tar -C "$U" -xf - || { echo "gpu_check: cannot unpack $PKG/phoenix-gpu.tar.xz" >&2; exit 2; }
  PKG=$U
  exec > >(tee "$OUT/gpu_check.log") 2>&1
  T0=$SECONDS
  step() { echo; echo "=== $1 ($((SECONDS - T0)) s)"; }
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  # CUDA libraries: the machine's toolkit and PyTorch's nvidia-* wheels (cuDNN 9, NCCL 2).
  NV=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]) + "/nvidia")' 2>/dev/null)
  CUDALIBS=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           "$NV"/cudnn/lib "$NV"/nccl/lib "$NV"/cublas/lib "$NV"/cuda_runtime/lib "$NV"/cu13/lib; do
    [ -d "$d" ] && CUDALIBS="$CUDALIBS:$d"
  done
  export LD_LIBRARY_PATH="$PKG/lib$CUDALIBS:${LD_LIBRARY_PATH:-}"
  export OPAL_PREFIX="$PKG/ompi" PATH="$PKG/ompi/bin:$PATH"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
  PHX=$PKG/bin/phoenix
  ldd "$PHX" | grep -E "not found|cudnn|nccl|cublas|cudart" | tee "$OUT/ldd.txt"
  step "gpu tests"
  for t in test_cuda_agreement test_nccl_group; do
    timeout 120 "$PKG/bin/$t" --gtest_output=xml:"$OUT/$t.xml" 2>&1 | tail -25
  done
  step "phoenix bench kernels --device cuda"
  timeout 150 "$PHX" bench kernels --device cuda --seconds 2 --json "$OUT/bench_kernels_cuda.json" 2>&1 | tail -30
  step "1 server + 2 CUDA workers (mpirun)"
  MPI=(mpirun --oversubscribe --bind-to none -n 3 --mca btl self,vader,tcp)
  timeout 150 "${MPI[@]}" "$PHX" train --model cnn --device cuda --servers 1 --epochs 2 --batch 64 \
      --data-dir "$PKG/data" --eval-every 0 --summary "$OUT/job_cuda.json" 2>&1 | tail -15
  step "the same job with CPU workers"
  timeout 120 "${MPI[@]}" "$PHX" train --model cnn --device cpu --threads 4 --servers 1 --epochs 2 --batch 64 \
      --data-dir "$PKG/data" --eval-every 0 --summary "$OUT/job_cpu.json" 2>&1 | tail -5
  step "the same CNN in PyTorch CUDA (2 epochs, batch 64, the same data)"
  timeout 120 python3 apps/scripts/torch_ref.py --data-dir "$PKG/data" --epochs 2 --batch 64 \
      --lr 0.01 --momentum 0.9 --device cuda 2>&1 | tail -5 | tee "$OUT/torch_cuda.txt"
  step "summary"
  python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
for n in ("job_cuda", "job_cpu"):
    p = os.path.join(out, n + ".json")
    if os.path.exists(p):
        s = json.load(open(p))
        print(f"{n}: {s['samples_per_s']:.0f} samples/s, test accuracy {s['final_test_accuracy']:.4f}, device {s['device']}")
    else:
        print(f"{n}: no summary")
PY
  echo "gpu_check: done in $((SECONDS - T0)) s; results in $OUT"
  ;;
*) echo "usage: $0 pack | device" >&2; exit 2 ;;
esac
