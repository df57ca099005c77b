#!/usr/bin/env bash
# Trains, exports and evaluates every engine of this repo on a CPU (2 cores; about 60 min
# wall-clock on the shared 2-core dev machine, see training/README.md for the measured times).
# Rerunnable: rendered caches are kept (.cache/data/*), trainings resume from
# checkpoints/<name>/last.pt and return at once when finished, exports and evaluation are redone.
# For a GPU run raise train.steps (and batch) in the YAMLs; torchrun works with training.train.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=.
export OMP_NUM_THREADS=1
LOG=runs/train_all
mkdir -p "$LOG"

render() {  # config split workers
  $PY -m training.data --config "training/configs/$1.yaml" --split "$2" --workers "$3"
}
train() {   # config [extra args]
  local c=$1; shift
  $PY -m training.train --config "training/configs/$c.yaml" --resume --no-progress "$@" >> "$LOG/$c.log" 2>&1
}

# 1. the cost-volume cache shared by ddfs_s and dfv_cv_s (F = 2..10, D = 32, 0.1..3.0 m)
render ddfs_s train 2
render ddfs_s val 2

# 2. two lanes of one core each
(
  train ddfs_s_phase1 --out checkpoints/ddfs_s     # 200 steps, batch 4, 128 x 128
  train ddfs_s                                     # -> 700 steps, batch 8, 64 x 64 crops
  train ddfs_s_phase3 --out checkpoints/ddfs_s     # -> 820 steps, second cosine from lr 1e-3
  train dfv_cv_s
  while [ ! -f .cache/data/shift3/val.npz ]; do sleep 10; done   # rendered by lane 2
  train shift_dfv_cv
) &
LANE1=$!
(
  render dfv_s train 1
  render dfv_s val 1
  train dfv_s
  render shift_ddfs train 1                        # one cache (stack + cost volume) for all shift_*
  render shift_ddfs val 1
  train shift_ddfs
  train shift_dfv
) &
LANE2=$!
wait $LANE1
wait $LANE2

# 2b. ddfs_s phase 4 on both cores once the lanes are done: the phase-3 run (step 820) copied to its
# own folder (checkpoints/ddfs_s is kept as it was) and resumed with a third cosine to step 2820
if [ ! -f checkpoints/ddfs_s_p4/last.pt ]; then
  mkdir -p checkpoints/ddfs_s_p4
  cp checkpoints/ddfs_s/{last.pt,best.pt,summary.json,log.csv} checkpoints/ddfs_s_p4/
fi
OMP_NUM_THREADS=2 train ddfs_s_phase4 --out checkpoints/ddfs_s_p4

# 3. export: shipped engines to engines/, camera-shift models next to their checkpoints (not shipped)
$PY -m training.export checkpoints/ddfs_s_p4/best.pt --out engines/ddfs_s.onnx --check
for n in dfv_cv_s dfv_s; do
  $PY -m training.export "checkpoints/$n/best.pt" --out "engines/$n.onnx" --check
done
for n in shift_ddfs shift_dfv_cv shift_dfv; do
  $PY -m training.export "checkpoints/$n/best.pt" --out "checkpoints/$n/$n.onnx" --no-pt2 --check
done

# 4. evaluation on settings the training never used (tables in training/RESULTS_*.md)
$PY -m training.evaluate --engines engines/ddfs_s.json engines/dfv_cv_s.json engines/dfv_s.json \
  --settings heldout heldout_scaled --count 48 --out training/RESULTS_heldout.md \
  --title "Shipped engines vs the classical baseline, held-out camera settings" &
$PY -m training.evaluate --engines checkpoints/shift_ddfs/shift_ddfs.json \
  checkpoints/shift_dfv_cv/shift_dfv_cv.json checkpoints/shift_dfv/shift_dfv.json \
  --settings shift_matched shift_focus shift_focus_f2 shift_lens shift_both --count 48 \
  --out training/RESULTS_camera_shift.md \
  --title "Camera-setting shift (trained on focus {0.1, 0.3, 1.5} m, F = 3, one lens)" &
wait
