#!/usr/bin/env bash
# The changes tried against the SupCon collapse (issue "A SupCon grader that learns"), one at a time, each a
# `vfscreen_benchmark curves` run on fold 0 of the planned demo dataset ($VFSCREEN_HOME), same steps for all:
#   base  both losses with the plan's grader as planned (the reference curves)
#   t15   SupCon, temperature 0.15 instead of 0.07
#   cos   SupCon, linear warm-up over 10 % of training, then cosine decay (instead of steps at 80 / 90 %)
#   aug   SupCon, the authors' augmentation switches (one shared p = 0.7 switch, mask boxes p = 0.5, isotropic zoom)
#   lr005 SupCon, SGD lr 0.005 (the authors' code) instead of the plan's
#   spc6  SupCon, 6 crops per grade instead of the plan's (more positives and negatives per anchor; a step costs more)
#   queue SupCon, a memory of the last 192 detached projections as extra keys (loss.queue_size; MoCo-style, no
#         momentum encoder): 8 batches of 24 views, more positives and negatives per anchor at almost the same step cost
# Usage: STEPS="100 200 400" benchmarks/curves_changes.sh [base t15 cos aug lr005 spc6 queue]   (default: all, in this order)
set -euo pipefail
STEPS=${STEPS:-"100 200 400"}
OUT=${OUT:-curves_changes}
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(base t15 cos aug lr005 spc6)
mkdir -p "$OUT"
for run in "${runs[@]}"; do
  case "$run" in
    base) args=(--losses supcon ce --tag base --grader_override '{}') ;;
    t15)  args=(--losses supcon --tag t15 --grader_override '{"loss": {"temperature": 0.15}}') ;;
    cos)  args=(--losses supcon --tag cos --grader_override '{"optimizer": {"schedule": "cosine", "warmup_fraction": 0.1}}') ;;
    aug)  args=(--losses supcon --tag aug --grader_override '{"augmentation": {"switch": "shared", "probability": 0.7, "mask_box_probability": 0.5, "isotropic_zoom": true}}') ;;
    lr005) args=(--losses supcon --tag lr005 --grader_override '{"optimizer": {"lr": 0.005}}') ;;
    spc6) args=(--losses supcon --tag spc6 --grader_override '{"sampler": {"samples_per_class": 6}}') ;;
    queue) args=(--losses supcon --tag queue --grader_override '{"loss": {"queue_size": 192}}') ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  echo "=== $run: $(date -u +%FT%TZ) ==="
  # shellcheck disable=SC2086
  vfscreen_benchmark curves -d 501 -f 0 --steps $STEPS "${args[@]}" -o "$OUT/$run" --markdown
done
