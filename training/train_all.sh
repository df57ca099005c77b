#!/usr/bin/env bash
# Renders, trains, exports and evaluates the shipped engines on a CPU.  Rerunnable and
# resumable: shards that exist are kept (.cache/focus_data/*), each training resumes from
# checkpoints/<name>/last.pt or, in a fresh clone, from the committed weights
# training/weights/<name>.pt, and runs for HOURS (default 1.5) more; export and evaluation
# are redone.  Two lanes of one core each (measured on the 2-core dev machine: see
# training/README.md).  For more samples per hour: more HOURS, a GPU (torch picks no device
# here: the trainer runs on CPU threads), or more shards (--shards 0:32).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOURS=${HOURS:-1.5}
export PYTHONPATH=.
export OMP_NUM_THREADS=1
mkdir -p runs

lane() {  # name train_shards "val parts" "part:shards ..." (the config's extra_train parts, in order)
  local n=$1 shards=$2 valparts=$3 extra=$4
  $PY -m training.stack_data --config "training/configs/$n.yaml" --split val --shards 0:1
  for p in $valparts; do   # parts marked val: true join the checkpoint selection: their val split first
    $PY -m training.stack_data --config "training/configs/$n.yaml" --split val --part "$p" --shards 0:1
  done
  $PY -m training.stack_data --config "training/configs/$n.yaml" --split train --shards 0:2
  # the trainer re-reads the shards at every pass, so it starts while the rest is rendered
  { $PY -m training.stack_data --config "training/configs/$n.yaml" --split train --shards "$shards"
    for ps in $extra; do   # the extra_train parts (see the config and training/README.md)
      $PY -m training.stack_data --config "training/configs/$n.yaml" --split train --part "${ps%%:*}" --shards "${ps#*:}"
    done; } &
  $PY -m training.train_focus --config "training/configs/$n.yaml" --resume --hours "$HOURS" >> "runs/train_$n.log" 2>&1
  wait
}
lane ddfs_s 2:16 "4" "1:0:16 2:0:8 3:0:8 4:0:16 5:0:10" &
lane dfv_s 2:24 "2" "1:0:16 2:0:16 3:0:10" &
wait

# export the validation-best checkpoints (chosen on validation only)
$PY -m training.export_focus checkpoints/ddfs_s/best.pt --out engines/ddfs_s.onnx
$PY -m training.export_focus checkpoints/dfv_s/best.pt --out engines/dfv_s.onnx
$PY -m training.plot_curves --runs ddfs_s dfv_s --out training/learning_curves.png

# test once, on bags of scenes no training or selection used (docs/EVALUATING.md section 6)
make eval-bags eval-table
$PY -m training.camera_shift --engines engines/ddfs_s.json engines/dfv_s.json --md training/RESULTS_camera_shift.md
