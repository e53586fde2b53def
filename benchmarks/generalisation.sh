#!/usr/bin/env bash
# Score the table's models on phantom settings they were not trained on (new subjects in every setting).
#   bash benchmarks/generalisation.sh [RUNS] [OUT]   (RUNS: the table's run folder; two settings at a time)
# Each setting generates 8 fresh subjects (seed 1000) under OUT/data/SETTING and scores the held-out slices at x4
# of the subjects the split leaves for test at the table's 5 DDIM steps (docs/ablations.md section 8 used 10); "id" is
# the training distribution on the same new seeds.
# Each setting prints its mean +- std table, then each method paired with linear per subject with a 95 % interval
# (benchmarks/paired_comparison.py; pool the id setting with the table's test subjects there: its docstring).
# breath_hold misregisters the kept slices of the id subjects (`calid evaluate --input-shift-mm 2`: each slice moved
# in plane by N(0, 2 mm) per axis, as the phantom's breath-hold option moves its sparse file) against unmoved truth.
set -euo pipefail
RUNS=${1:-runs/table/quick/phantom}
OUT=${2:-results/generalisation}
CALID=${CALID:-.venv/bin/calid}
export WANDB_MODE=disabled OMP_NUM_THREADS=1
mkdir -p "$OUT"

declare -A SETTINGS=(
  [id]=""
  [pathology]="phantom.pathologies=[DCM,HCM,MINF,ARV]"
  [pixel_1mm]="phantom.pixel_spacing=1.0"
  [gap_12mm]="phantom.dense_spacing=3.0"
  [full_fov]="crop_size=128"
  [breath_hold]=""
)
ORDER=(id pathology pixel_1mm gap_12mm full_fov breath_hold)

score() {
  local name=$1 root=$OUT/data/$1 cache=$OUT/cache/$1 extra=()
  [[ $name == full_fov || $name == breath_hold ]] && root=$OUT/data/id  # the id subjects, uncropped / moved
  [[ $name == breath_hold ]] && cache=$OUT/cache/id extra=(--input-shift-mm 2)
  [[ -n ${SETTINGS[$name]} ]] && extra=(--data-override "${SETTINGS[$name]}")
  "$CALID" evaluate --data data_modules/phantom.yaml --quiet --no-warmup \
    --data-override "root=$root" --data-override phantom.seed=1000 --data-override phantom.subjects=8 \
    --data-override 'split=[0.0,0.0,1.0]' --data-override "cache_dir=$cache" "${extra[@]}" \
    --checkpoint "$RUNS/calid_spatial/checkpoints/last.ckpt" --segmenter "$RUNS/segmenter/checkpoints/last.ckpt" \
    --methods calid_mean_detail,calid_detail,calid_mean,calid,lerp,linear,vae_truth,truth --factor 4 --steps 5 \
    --out "$OUT/$name.csv" > "$OUT/$name.log" 2>&1
  echo "done $name"
}

score id  # full_fov reuses its subjects
for ((i = 1; i < ${#ORDER[@]}; i += 2)); do
  score "${ORDER[i]}" &
  [[ -n ${ORDER[i + 1]:-} ]] && score "${ORDER[i + 1]}" &
  wait
done
for name in "${ORDER[@]}"; do
  echo "## $name ${SETTINGS[$name]}"
  sed -n '/^| method/,$p' "$OUT/$name.log"
  echo
  "$(dirname "$CALID")/python" benchmarks/paired_comparison.py "$OUT/${name}_subjects.csv" | sed 1,2d
done
