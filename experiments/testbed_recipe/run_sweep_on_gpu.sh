#!/usr/bin/env bash
# The recipe sweep as run on a lent GPU machine (see testbed_recipe_sweep.py), from the repository root. Wheels
# for what the machine's image lacks (diffusers, h5netcdf) travel in .whl/; memprune is read from workflow/. Uses CUDA MPS when it starts cleanly, so that the
# variants' small kernels share the card instead of time-slicing it.
set -u
OUT=${OUT:-/tmp/sweep_out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/workflow PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
if timeout 20 nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; x=torch.ones(8,device='cuda'); print('mps check', float(x.sum()))"; then
  echo "MPS on"
else
  echo "MPS off"; echo quit | timeout 10 nvidia-cuda-mps-control || true
fi
python3 experiments/testbed_recipe/testbed_recipe_sweep.py --out "$OUT" --deadline "${DEADLINE:-470}" --variants "${VARIANTS:-A_base,B_ema,D_r12_ema,E_r12_ema_text,G_r18_ema,H_r12_ema_vae5k}" 2>&1 | grep -v "it/s\]\|s/it\]" | tee "$OUT/stdout.txt"
for f in /tmp/memprune_sweep/log_*.txt; do echo "== $f"; grep -E "unet step (0|1000|4000|7900) |done in|guidance [0-9.]+:" "$f" | tail -8; done
