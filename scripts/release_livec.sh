#!/usr/bin/env bash
# Train a released model on all 930 LIVEC images and export its float32 copy and its ONNX graph into the package
# (src/qfm_iqm/weights/<stem>.{safetensors,json}).
# Usage: bash scripts/release_livec.sh STEM INTERVAL_JSON [extra qfm-iqm train options]
#   INTERVAL_JSON: the 90% score interval to record ('{}' for none), e.g. from the benchmark cell of the
#   same recipe (scripts/release_interval.py).
# qfm-iqm-lite0-livec-v2 (the default model) was made with:
#   bash scripts/release_livec.sh qfm_iqm_lite0_livec_v2 "$(python scripts/release_interval.py \
#       results/benchmark/livec-multistage/livec/qfm-rank)" --config configs/release/lite0_livec_v2.yaml
# qfm-iqm-lite0-livec (v1) was made with (semantic noise on, distillation off, fine-tuned last stage):
#   bash scripts/release_livec.sh qfm_iqm_lite0_livec '{}' --mode qfm --set lr=5e-5 --set head_lr_scale=10 \
#       --set schedule=cosine --set teacher=none
set -euo pipefail
cd "$(dirname "$0")/.."
stem=$1 interval=$2
shift 2
out=runs/release-$stem
qfm-iqm train --dataset livec --data-root "${QFM_IQM_LIVEC_ROOT:-../shared/datasets/livec}" --all --output "$out" "$@"
python - "$out" "$stem" "$interval" <<'PY'
import json, sys
from qfm_iqm.inference.pretrained import export_release
from qfm_iqm.inference.runtime import ship_graph
out, stem, interval = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
extra = {"interval": interval} if interval else {}
# float32: an fp16 copy moved scores by up to 0.075 MOS
release = export_release(out, "src/qfm_iqm/weights", stem, extra, half=False)
print(release, ship_graph(release))  # its ONNX graph beside it: no export on first use
PY
