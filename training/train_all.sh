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

lane() {  # name "val parts" "part:shards ..." (the config's parts that are trained on now; part 0 = data)
  local n=$1 valparts=$2 train=$3
  # validation splits: part 0 (the learning curve) and every part marked val: true (train.select_on
  # chooses best.pt among them)
  for p in 0 $valparts; do
    $PY -m training.stack_data --config "training/configs/$n.yaml" --split val --part "$p" --shards 0:1
  done
  local first=${train%% *}
  $PY -m training.stack_data --config "training/configs/$n.yaml" --split train --part "${first%%:*}" --shards 0:2
  # the trainer re-reads the shards at every pass, so it starts while the rest is rendered
  { for ps in $train; do
      $PY -m training.stack_data --config "training/configs/$n.yaml" --split train --part "${ps%%:*}" --shards "${ps#*:}"
    done; } &
  $PY -m training.train_focus --config "training/configs/$n.yaml" --resume --hours "$HOURS" >> "runs/train_$n.log" 2>&1
  wait
}
# Since session 8 the earlier parts are `train: false` (pixel-area disk): only their validation
# splits are rendered; training reads the band-limited parts (ddfs: extra 6 = cv96_h, 7 = cv96_i,
# and the validation split of 8 = cv96_rp, real aperture pairs (session 10); dfv: extra 4 =
# stack5_96_e, 5 = stack5_96_f).  A run from scratch needs the earlier parts'
# training shards too (training/README.md, the parts table): render them with --part N.
lane ddfs_s "4 6 8" "6:0:24 7:0:12" &
lane dfv_s "2 4" "4:0:16 5:0:8" &
wait

# export the validation-best checkpoints (chosen on validation only)
# Session 17-18: the shipped ddfs_s is ddfs_s's 960,000-sample best fine-tuned on the same draws rendered at 192 px
# (training/configs/ddfs_s_r192.yaml, 960k -> 1,000k, chosen at 256 px on validation: training/README.md, session 17);
# its committed weights are exported as they are (batches 0: BatchNorm was frozen in that run).  To rerun it, the render
# and train commands at the top of that config, from the ddfs_s lane's 960k best.pt saved as checkpoints/ddfs_s_r192/last.pt.
$PY -m training.average_weights training/weights/ddfs_s_r192.pt --config training/configs/ddfs_s_r192.yaml --batches 0 \
    --out checkpoints/ddfs_s_r192/shipped.pt
$PY -m training.export_focus checkpoints/ddfs_s_r192/shipped.pt --out engines/ddfs_s.onnx
$PY -m training.export_focus checkpoints/dfv_s/best.pt --out engines/dfv_s.onnx
$PY -m training.plot_curves --runs ddfs_s dfv_s ddfs_s_r192 --out training/learning_curves.png

# test once, on bags of scenes no training or selection used (docs/EVALUATING.md section 6)
make eval-bags eval-table
$PY -m training.camera_shift --engines engines/ddfs_s.json engines/dfv_s.json engines/ens_s.json --md training/RESULTS_camera_shift.md
