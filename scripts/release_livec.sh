#!/usr/bin/env bash
# Train the released model qfm-iqm-lite0-livec on all 930 LIVEC images of ../shared/datasets/livec
# and export its float32 copy into the package (src/qfm_iqm/weights/).
# Usage: bash scripts/release_livec.sh [extra qfm-iqm train options]
# The shipped model was made with (semantic noise on, distillation off):
#   bash scripts/release_livec.sh --mode qfm --set lr=5e-5 --set head_lr_scale=10 --set schedule=cosine --set teacher=none
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/release-lite0-livec
qfm-iqm train --dataset livec --all --output "$out" "$@"
python - "$out" <<'PY'
import sys
from qfm_iqm.models.pretrained import export_release
# float32: an fp16 copy moved scores by up to 0.075 MOS
print(export_release(sys.argv[1], "src/qfm_iqm/weights", "qfm_iqm_lite0_livec", {}, half=False))
PY
