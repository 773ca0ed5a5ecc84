#!/usr/bin/env bash
# pancreas-ct, the CPRUN way, stage by stage (each stage skips when its output exists, so the recipe resumes):
# a U-Net 16-256 teacher, L1 pruning of half of each layer's channels, the reconstructed 8-128 U-Net, then
# knowledge distillation (logits and encoder features) from the teacher (that is 0.2.0), then the distilled net
# trained further with reviewed LiTS negatives from above the pancreas (0.3.0). Run from the repository root with
# the venv active:
#   bash benchmarks/pancreas_cprun.sh            # every stage
#   bash benchmarks/pancreas_cprun.sh distill    # one stage
#   bash benchmarks/pancreas_cprun.sh crossval   # the whole recipe, 3 folds by patient, one process per fold (hours)
# TEACHER_CFG picks the teacher's config (data, crops, budget); KD_MIN is the distillation's wall-clock budget.
# The whole-volume attempt of 2026-12-02 (hard negatives from s0009, not shipped; see configs/experiments/pancreas_wholevol_teacher.toml):
#   TEACHER_CFG=configs/experiments/pancreas_wholevol_teacher.toml RUN=runs/pancreas_wv bash benchmarks/pancreas_cprun.sh
# Budgets are the ones of the shipped model (a shared 2-core AMD EPYC, one thread per job; bfloat16 autocast for
# the teacher and distillation, fp32 for the negatives stage).
set -euo pipefail
TEACHER_CFG=${TEACHER_CFG:-configs/models/pancreas-ct.stage1-teacher.toml}
RUN=${RUN:-runs/pancreas_teacher}
KD_MIN=${KD_MIN:-40}
THREADS=${THREADS:-1}
CV_RUN=${CV_RUN:-runs/pancreas_cv_recipe}
NEG_RUN=${NEG_RUN:-runs/pancreas_litsneg}
INIT_ONNX=Resources/Checkpoints/pancreas-ct-0.2.0.onnx
# benchmarks/ct_crossval.py's result for the card: the whole recipe's when it is done, else the 10-minute one
CV=${CV:-$([ -f $CV_RUN/crossval.json ] && echo $CV_RUN/crossval.json || echo runs/pancreas_cv/crossval.json)}

done_or() { [ -f "$1" ] && echo "skip: $1 exists" || return 1; }

teacher() { done_or $RUN/summary.json || lightseg train --config $TEACHER_CFG --out $RUN \
    --threads $THREADS; }
prune()   { done_or $RUN/cprun.pt || lightseg prune-ct --config $TEACHER_CFG $RUN/best.pt \
    --importance l1 --ratio 0.5 --threads $THREADS --out $RUN/cprun.pt; }
distill() { done_or $RUN/kd/best.pt || lightseg distill --teacher $RUN/best.pt --student $RUN/cprun.pt \
    --config $TEACHER_CFG --methods logit,feature --lr 1e-3 --iters 1000000 --time-budget $KD_MIN --threads $THREADS \
    --out $RUN/kd $([ -f $RUN/kd/state.pt ] && echo --resume); }
# The same stages per fold at the shipped run's budgets in iterations (6,114 teacher iterations = 77 epochs of 80;
# 3,684 distillation iterations), so that a loaded machine gives the same recipe. Resumable: rerun to continue.
# The last fold to finish writes the summary; the final plain call finishes any fold whose process failed.
cv_args=(--config $TEACHER_CFG --folds 3 --epochs 77 --prune="--importance l1 --ratio 0.5"
    --distill="--methods logit,feature --lr 1e-3 --iters 3684" --card configs/cards/pancreas-ct.json
    --threads $THREADS --out $CV_RUN)
crossval() { mkdir -p $CV_RUN; echo "logs: $CV_RUN/fold{0,1,2}.log"
    for k in 0 1 2; do python benchmarks/ct_crossval.py "${cv_args[@]}" --fold $k >> $CV_RUN/fold$k.log 2>&1 & done
    wait; python benchmarks/ct_crossval.py "${cv_args[@]}"; }
# 0.3.0: the distilled net trained further. The negatives config's train.init_onnx reads the committed 0.2.0 file;
# a distillation run made here (newer than that file) is exported over it first.
negatives() { done_or $NEG_RUN/summary.json || {
    if [ -f $RUN/kd/best.pt ] && [ $RUN/kd/best.pt -nt $INIT_ONNX ]; then
        lightseg export $RUN/kd/best.pt --out $INIT_ONNX; fi
    lightseg train --config configs/models/pancreas-ct.toml --out $NEG_RUN \
        --threads $THREADS; }; }
publish() { lightseg publish $NEG_RUN/best.pt --id pancreas-ct --card configs/cards/pancreas-ct.json \
    --config configs/models/pancreas-ct.toml --threads $THREADS \
    --reproduce "bash benchmarks/pancreas_cprun.sh && bash benchmarks/pancreas_cprun.sh publish" \
    $([ -f $CV ] && echo --crossval $CV); }

if [ $# -eq 0 ]; then set -- teacher prune distill negatives; fi
for stage in "$@"; do "$stage"; done
