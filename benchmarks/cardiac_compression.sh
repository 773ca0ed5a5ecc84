#!/usr/bin/env bash
# The cardiac compression study of docs/compression.md, stage by stage (each stage is one command and skips
# when its output exists, so the study resumes). Run from the repository root with the venv active:
#   bash benchmarks/cardiac_compression.sh train      # teacher + LFU-Net + DPU-Net baselines (lightseg train)
#   bash benchmarks/cardiac_compression.sh compress   # pruning, CPRUN, Ghost, distillation (after the teacher)
#   bash benchmarks/cardiac_compression.sh publish    # export + int8 + engine evaluation + benchmark + plots
# Single stages: bash benchmarks/cardiac_compression.sh <stage name>, e.g. tiny_gcn; several run in the order given:
#   bash benchmarks/cardiac_compression.sh teacher student folded   # cardiac-acdc-fast: configs/models/cardiac-acdc-fast.toml
# Budgets are the ones measured in docs/compression.md (a shared 2-core AMD EPYC, bfloat16 autocast).
set -euo pipefail
DATA=${DATA:-../shared/data/acdc}
RUNS=${RUNS:-runs}
CFG=configs/models/cardiac-acdc-fast.toml
T=$RUNS/cardiac_unet32/best.pt
TINY='{"name": "tinyunet", "in_channels": 1, "num_classes": 4, "widths": [6, 12, 24, 48, 96]}'
STAGES="0.8,0.85,0.88,0.9,0.93"   # hierarchical per-stage pruning ratios, shallow to deep (about 0.9% of the teacher's params)
TINY_ITERS=${TINY_ITERS:-600}       # TinyUNet with and without distillation (tiny_none_long: 1200, no KD)
PRUNE_FT=${PRUNE_FT:-100}           # fine-tuning after each of the 3 pruning steps
RECON_ITERS=${RECON_ITERS:-600}     # CPRUN fine-tuning of the rebuilt net (and the from-scratch comparison)
GHOST_ITERS=${GHOST_ITERS:-500}
DPU_ITERS=${DPU_ITERS:-672}   # the iterations the DPU-Net baseline reached in its 42-minute lightseg train run

done_or() { [ -f "$1" ] && echo "skip: $1 exists" || return 1; }

teacher()  { done_or $RUNS/cardiac_unet32/summary.json || lightseg train --config configs/models/cardiac-acdc-teacher.toml --data $DATA --out $RUNS/cardiac_unet32; }
lfunet()   { done_or $RUNS/cardiac_lfunet/summary.json || lightseg train --config configs/experiments/cardiac_lfunet.toml --data $DATA --out $RUNS/cardiac_lfunet; }
dpunet()   { done_or $RUNS/cardiac_dpunet/summary.json || lightseg train --config configs/experiments/cardiac_dpunet.toml --data $DATA --out $RUNS/cardiac_dpunet; }

# L1 filter norms, per-stage ratios, 3 pruning steps with fine-tuning, CPRUN reconstruction + fine-tuning, and the
# same narrow U-Net trained from scratch for the same iterations (the CPRUN question).
prune_l1() { done_or $RUNS/cc_l1/best.pt || lightseg prune $T --importance l1 --stage-ratios $STAGES --steps 3 \
    --finetune-iters $PRUNE_FT --reconstruct-iters $RECON_ITERS --compare-scratch --config $CFG --data $DATA --threads 1 \
    --out $RUNS/cc_l1/best.pt > $RUNS/cc_l1.log 2>&1; }
# Network slimming: L1 sparsity on BN gammas, then BN-scale importance, same ratios and schedule.
prune_bn() { done_or $RUNS/cc_bn/best.pt || lightseg prune $T --importance bn --sparsity-iters 200 --sparsity 1e-4 \
    --stage-ratios $STAGES --steps 3 --finetune-iters $PRUNE_FT --reconstruct-iters $RECON_ITERS --config $CFG --data $DATA \
    --threads 1 --out $RUNS/cc_bn/best.pt > $RUNS/cc_bn.log 2>&1; }
ghost()    { done_or $RUNS/cc_ghost/best.pt || lightseg prune $T --ghost --finetune-iters $GHOST_ITERS --config $CFG --data $DATA \
    --threads 1 --out $RUNS/cc_ghost/best.pt > $RUNS/cc_ghost.log 2>&1; }
dpu_mavkd() { done_or $RUNS/cc_dpu_mavkd/best.pt || lightseg distill --teacher $T --student configs/experiments/cardiac_dpunet.toml \
    --methods mavkd --iters $DPU_ITERS --config $CFG --data $DATA --threads 1 --out $RUNS/cc_dpu_mavkd > $RUNS/cc_dpu_mavkd.log 2>&1; }
dpu_none() { done_or $RUNS/cc_dpu_none/best.pt || lightseg distill --teacher $T --student configs/experiments/cardiac_dpunet.toml \
    --methods none --iters $DPU_ITERS --config $CFG --data $DATA --threads 1 --out $RUNS/cc_dpu_none > $RUNS/cc_dpu_none.log 2>&1; }
tiny_none() { done_or $RUNS/cc_tiny_none/best.pt || lightseg distill --teacher $T --student "$TINY" --methods none \
    --iters $TINY_ITERS --config $CFG --data $DATA --threads 1 --out $RUNS/cc_tiny_none > $RUNS/cc_tiny_none.log 2>&1; }
tiny_none_long() { done_or $RUNS/cc_tiny_none1200/best.pt || lightseg distill --teacher $T --student "$TINY" --methods none \
    --iters 1200 --config $CFG --data $DATA --threads 1 --out $RUNS/cc_tiny_none1200 > $RUNS/cc_tiny_none1200.log 2>&1; }
tiny_feature() { done_or $RUNS/cc_tiny_feature/best.pt || lightseg distill --teacher $T --student "$TINY" --methods feature \
    --iters $TINY_ITERS --config $CFG --data $DATA --threads 1 --out $RUNS/cc_tiny_feature > $RUNS/cc_tiny_feature.log 2>&1; }
tiny_gcn() { done_or $RUNS/cc_tiny_gcn/best.pt || lightseg distill --teacher $T --student "$TINY" --methods feature,gcn \
    --iters $TINY_ITERS --config $CFG --data $DATA --threads 1 --out $RUNS/cc_tiny_gcn > $RUNS/cc_tiny_gcn.log 2>&1; }

# The long student for the issue-4 targets: one-shot L1 pruning of the teacher to 4-8-16-24-40 (0.87% of its
# parameters; widths picked for CPU speed, see docs/compression.md), CPRUN rebuild, then logit KD from the shipped
# U-Net 8-128 (a teacher assistant: 16x cheaper per step than the 32-512 teacher) for STUDENT_MIN minutes.
# Resumable: rerun the stage after an interruption (it adds --resume when state.pt exists).
STUDENT_MIN=${STUDENT_MIN:-110}
student() { done_or $RUNS/cc_student/best.pt || {
    [ -f $RUNS/cc_student/init.pt ] || lightseg prune $T --importance l1 --stage-ratios 0.875,0.875,0.875,0.90625,0.921875 \
      --steps 1 --finetune-iters 0 --reconstruct-iters 0 --config $CFG --data $DATA --threads 1 --out $RUNS/cc_student/init.pt
    lightseg distill --teacher Resources/Models/cardiac-acdc.pt --student $RUNS/cc_student/init.pt --methods logit \
      --config $CFG --data $DATA --iters 100000 --time-budget $STUDENT_MIN --threads 1 --out $RUNS/cc_student \
      $([ -f $RUNS/cc_student/state.pt ] && echo --resume) >> $RUNS/cc_student.log 2>&1; }; }

# Resolution folding of the student (issue-4 speed target): drop its full-resolution stage, run the rest at half
# resolution (space-to-depth in, sub-pixel logits out), keep every deeper weight, then logit KD again for FOLD_MIN
# minutes at a lower learning rate (a warm start).
FOLD_MIN=${FOLD_MIN:-120}
folded() { done_or $RUNS/cc_fold/best.pt || {
    [ -f $RUNS/cc_fold/init.pt ] || lightseg fold $RUNS/cc_student/best.pt --out $RUNS/cc_fold/init.pt
    lightseg distill --teacher Resources/Models/cardiac-acdc.pt --student $RUNS/cc_fold/init.pt --methods logit \
      --config $CFG --data $DATA --iters 100000 --time-budget $FOLD_MIN --lr 1e-3 --threads 1 --out $RUNS/cc_fold \
      $([ -f $RUNS/cc_fold/state.pt ] && echo --resume) >> $RUNS/cc_fold.log 2>&1; }; }

publish()  { python benchmarks/compression_report.py --runs $RUNS --data $DATA; }

usage() { sed -n 2,9p "$0"; exit 2; }
[ $# -gt 0 ] || usage
for stage in "$@"; do
  case "$stage" in
    train) teacher; lfunet; dpunet ;;
    compress) prune_l1; prune_bn; ghost; dpu_mavkd; dpu_none; tiny_none; tiny_none_long; tiny_feature; tiny_gcn; student; folded ;;  # or run stages side by side
    publish) publish ;;
    teacher|lfunet|dpunet|prune_l1|prune_bn|ghost|dpu_mavkd|dpu_none|tiny_none|tiny_none_long|tiny_feature|tiny_gcn|student|folded) "$stage" ;;
    *) usage ;;
  esac
done
