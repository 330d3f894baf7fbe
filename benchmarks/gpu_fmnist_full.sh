#!/bin/bash
# One device call of at most 9 minutes (issue 30): first benchmarks/gpu_check.py's timing sections alone on the
# GPU -- MIL/supervised images/s for cnn2 and resnet18 and the CIFAR-10-shaped PSMIL epoch, each with the eager
# and the captured step (train.compile = "reduce-overhead": CUDA graphs) --, then the full-scale FMNIST PSMIL
# row (issue 13, docs/results-psmil.md "Full scale on a GPU"; captured step) until TRAIN_END, with the
# correctness sections (CUDA tests, torchrun on NCCL, GPU checkpoint -> CPU) beside it.  20 epochs may not fit
# what is left of the call: the run stops at TRAIN_END with its finished epochs recorded ('interrupted') and the
# row is reported as partial.  (Resuming in a second call would need the run's state back here: 37 MB, with the
# 30 MB of FMNIST data that travel, over the 64 MiB a call carries.)  A training-only call:
# `CHECKS=0 TRAIN_END=560 bash benchmarks/gpu_fmnist_full.sh`.
#
# Prepare here (the device machine has no network and no pydantic; its python3 is 3.12 with torch):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pydantic pydantic_core annotated-types typing-inspection \
#       typing_extensions tomli_w          # versions as in .venv (pydantic_core must match pydantic)
#   .venv/bin/pip wheel --no-deps --no-build-isolation -w .whl . $(ls -d plugins/milzoo-* | grep -v weights)
#       (not the weight distributions: their 45 MB of trained models are not needed there)
#   mv plugins/milzoo-weights-classic/src/milzoo_weights_classic/weights /tmp/weights-classic   # and -fmnist's:
#       the working tree travels too, and with them it is over the 64 MiB a call carries; move them back after
#       the call (`git status` shows them deleted until then)
#       (again after any change: the core runs from the tree, `python3 -m milzoo` in the repository root, but
#       the plugins and their entry points come from these wheels)
#   mkdir -p .gpu/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/fashion-mnist/
# Run there: `bash benchmarks/gpu_fmnist_full.sh` with carry [".whl", ".gpu"], timeout_s 600; $OUT gets
# gpu_runs.tgz (run folders without weights), correct/gpu_check.json and timing/gpu_check.json.
# Rehearse here on the CPU at tiny sizes (a venv without milzoo, wheels for this Python):
#   SIM=1 PY=/path/to/venv/bin/python WHL=/path/to/wheels OUT=/tmp/o bash benchmarks/gpu_fmnist_full.sh
set -u
PY=${PY:-python3}
SIM=${SIM:-0}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
TRAIN_END=${TRAIN_END:-525}   # seconds after start at which the trainings are stopped (SIGINT: run.json 'interrupted')
TIMING_S=${TIMING_S:-280}     # wall limit of the timing sections, run first and alone on the GPU
BUDGET=${BUDGET:-15}          # seconds of timed PSMIL training per form of the step (gpu_check section 3)
MODELS=${MODELS:-psmil}       # the full-scale rows to train (recipes/psmil/fmnist/<model>.toml)
COMPILE=${COMPILE:-reduce-overhead}  # their train.compile (false: the eager step)
CHECKS=${CHECKS:-1}           # 0: no gpu_check sections (e.g. `CHECKS=0 TRAIN_END=560`)
W=/tmp/gpu_runs; rm -rf $W /tmp/site; mkdir -p $W $OUT
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-.whl}/*.whl || exit 3
export PYTHONPATH=/tmp/site MILZOO_DATA_DIR=$PWD/.gpu/data PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
$PY -c "import torch, milzoo, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 3
if [ "$SIM" = 1 ]; then
  DEV="--set train.device=cpu --set train.threads=1"; SMALL="--set data.max_bags_per_class=3 --set train.epochs=2"
  CHECK="--dry-run"; COMPILE=false  # inductor on a CPU takes minutes; the dry run checks the captured path
else
  DEV=""; SMALL=""; CHECK=""
fi
# smoke: one tiny epoch of PSMIL on the device must run before anything long starts
timeout ${SMOKE_S:-120} $PY -m milzoo run recipes/psmil/fmnist/psmil.toml --out $W/smoke --no-progress $DEV \
  --set data.max_bags_per_class=4 --set train.epochs=1 --set train.batch_size=4 > $W/smoke.log 2>&1
rc=$?; tail -5 $W/smoke.log; echo "[$(el)s] smoke rc $rc"
[ $rc = 0 ] || { cp $W/smoke.log $OUT/; exit 4; }
# timing sections first, alone on the GPU (eager and captured step); each section's JSON is written as it ends
if [ "$CHECKS" = 1 ]; then
  timeout -s INT $TIMING_S $PY benchmarks/gpu_check.py $CHECK --skip tests dist wsi --budget $BUDGET \
    --out $OUT/timing > $W/check_timing.log 2>&1
  echo "[$(el)s] timing sections rc $?"; tail -14 $W/check_timing.log; cp $W/check_timing.log $OUT/timing/ 2>/dev/null
fi
FULL=(--no-progress --set data.max_bags_per_class=1200 --set data.val_fraction=0
      --set 'protocol.eval_splits=["test_instances"]' --set train.batch_size=4 --set train.compile=$COMPILE)
STOP=$(( TRAIN_END - $(el) ))
for m in $MODELS; do
  timeout -s INT -k 30 $STOP $PY -m milzoo run recipes/psmil/fmnist/$m.toml --out $W/$m "${FULL[@]}" $DEV $SMALL \
    > $W/$m.log 2>&1 &
done
# correctness sections (no timings) while the trainings run
if [ "$CHECKS" = 1 ]; then
  $PY benchmarks/gpu_check.py $CHECK --skip throughput psmil wsi --out $OUT/correct > $W/check_correct.log 2>&1
  echo "[$(el)s] correctness sections rc $?"; tail -8 $W/check_correct.log
fi
wait
echo "[$(el)s] trainings ended"
for m in $MODELS; do tail -3 $W/$m.log; done
# weights stay behind: cnn2's resumable state is 37 MB, over what a call brings back (16 MiB a file)
find $W -name '*.safetensors' -delete
tar czf $OUT/gpu_runs.tgz -C /tmp gpu_runs
echo "[$(el)s] done"
