#!/usr/bin/env bash
# The CUDA path on a lent GPU machine (this workplace's `device` tool), whose image has torch but no TorchRec:
# TorchRec and fbgemm-gpu-cpu travel as wheels in .whl/ (fbgemm-gpu's CUDA build, 465 MB, cannot: the model's
# embedding tables then run as plain CUDA lookups, unsharded, and the sharded-catalog sweep is attempted only
# to record why it fails). Results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, torchrec; print('torch', torch.__version__, 'torchrec', torchrec.__version__, torch.cuda.get_device_name())"
python3 bench/scale.py --device cuda --parts sequence,flops --out "$OUT" 2>&1 | tee "$OUT/scale-cuda.log"
timeout 120 python3 bench/scale.py --device cuda --parts catalog --quick --out "$OUT" 2>&1 | tail -5 | tee "$OUT/catalog-cuda.log"
