#!/usr/bin/env bash
# GPU check of the grader and of prediction speed, in one call of at most ~9 minutes on one large GPU:
#   1. generate the phantom (default: the full preset, NUM_CASES training cases),
#   2. plan it for the GPU (the planner's real CUDA branch, PRESET) and cut the grader crops,
#   3. train fold 0 of each loss (SupCon, CE) for TRAIN_MINUTES each; print views/s and both readouts' validation
#      metrics (head = raw logits, probe = logistic regression on frozen features),
#   4. time vfscreen_predict with 5 folds on a 1.5 mm case (untrained weights; vfscreen_benchmark speed
#      --untrained_preset PRESET: the real planner, random seeded networks, the real prediction stages).
# Every setting can be overridden from the environment, e.g. a CPU dry run with tiny settings:
#   DEVICE=cpu PRESET=cpu_demo PHANTOM=demo NUM_CASES=12 TRAIN_MINUTES=0.2 SPEED_PHANTOM=demo \
#       bash benchmarks/gpu_check.sh
set -euo pipefail
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-faint_features_2022}
PHANTOM=${PHANTOM:-full}
SPEED_PHANTOM=${SPEED_PHANTOM:-full}
NUM_CASES=${NUM_CASES:-60}
TRAIN_MINUTES=${TRAIN_MINUTES:-1}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-200}
WORK=${WORK:-$(mktemp -d -t vfscreen_gpu_check.XXXXXX)}
NPROC=$(nproc)
export VFSCREEN_HOME="$WORK/home"
export nnUNet_raw="$VFSCREEN_HOME/raw" nnUNet_preprocessed="$VFSCREEN_HOME/preprocessed"
export nnUNet_results="$VFSCREEN_HOME/results"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
phase() { echo "=== $1 (at ${SECONDS} s)"; }

phase "machine"
"$PY" - <<'PYTHON'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
PYTHON
echo "settings: DEVICE=$DEVICE PRESET=$PRESET PHANTOM=$PHANTOM NUM_CASES=$NUM_CASES TRAIN_MINUTES=$TRAIN_MINUTES" \
     "WORK=$WORK"

phase "generate the $PHANTOM phantom ($NUM_CASES training cases)"
timeout "$PHASE_TIMEOUT" "$PY" -c 'import sys; from vfscreen.phantom.cli import main; main(sys.argv[1:])' --preset "$PHANTOM" --num_cases "$NUM_CASES" \
    --num_test_cases 1 -np "$NPROC"

phase "plan for $DEVICE with preset $PRESET, grader crops"
timeout "$PHASE_TIMEOUT" "$PY" -m vfscreen.experiment_planning.cli -d 501 --device "$DEVICE" --preset "$PRESET" \
    --stage grader -np "$NPROC"
"$PY" - <<'PYTHON'
import json, os
plans = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset501_SyntheticSpine",
                                    "vfscreenPlans.json")))
grader = plans["configurations"]["3d"]["grader"]
print("grader plan:", grader["network"]["name"], "patch", grader["crop"]["patch_size"], "spacing",
      grader["crop"]["spacing_mm"], "per grade", grader["sampler"]["samples_per_class"], "optimizer",
      grader["optimizer"], "estimated memory GB", grader.get("estimated_memory_gb"))
PYTHON

for loss in supcon ce; do
    phase "train fold 0, loss $loss, $TRAIN_MINUTES minutes"
    timeout "$PHASE_TIMEOUT" "$PY" -m vfscreen.training.cli 501 3d 0 --stage grader --loss "$loss" \
        --device "$DEVICE" --plans_tag gpucheck \
        --grader_override "{\"max_minutes\": $TRAIN_MINUTES, \"validate_every\": 1000000}" > "$WORK/train_$loss.log" 2>&1 \
        || { echo "training $loss failed or timed out; its log:"; tail -20 "$WORK/train_$loss.log"; }
    LOSS=$loss "$PY" - <<'PYTHON'
import json, os, pathlib, re
trainer = "vfscreen_grader" if os.environ["LOSS"] == "supcon" else "vfscreen_graderCE"
fold = pathlib.Path(os.environ["nnUNet_results"]) / "Dataset501_SyntheticSpine" / \
    f"{trainer}__vfscreenPlans_gpucheck__3d" / "fold_0"
log = (fold / "training_log.txt").read_text() if (fold / "training_log.txt").is_file() else ""
rates = [float(v) for v in re.findall(r"([0-9.]+) views/s", log)]
print(f"{os.environ['LOSS']}: {len(rates)} epochs, views/s (median over epochs after the first):",
      sorted(rates[1:])[len(rates[1:]) // 2] if len(rates) > 1 else (rates or ["n/a"])[0])
metrics_file = fold / "validation" / "metrics.json"
if metrics_file.is_file():
    metrics = json.loads(metrics_file.read_text())
    for name, readout in metrics.get("readouts", {}).items():
        print(f"  validation, {name} readout: AUROC {readout['auroc']}, macro-F1 {readout['macro_f1']:.3f}, "
              f"predicted per grade {readout['predicted_per_grade']}")
else:
    print("  no validation metrics (training did not finish)")
PYTHON
done

phase "vfscreen_predict speed, 5 folds, 1.5 mm $SPEED_PHANTOM case (untrained $PRESET models)"
timeout "$PHASE_TIMEOUT" "$PY" -m vfscreen.evaluation.benchmark speed --untrained_preset "$PRESET" \
    --device "$DEVICE" -f 0 1 2 3 4 --phantom_preset "$SPEED_PHANTOM" --slice_thickness_mm 1.5 \
    --work_dir "$WORK/speed" -o "$WORK/speed.json" --markdown
phase "done"
