#!/usr/bin/env bash
# Reproduce the papers' runs in batch. Every run goes into $RUNS_DIR/<experiment>/<variant>; an interrupted
# run is continued and a finished one left alone, so after a preemption the same command carries on.
#
#   bash run.sh demo                 offline demo: tiny ViT on scikit-learn digits, baseline vs R-Drop
#   bash run.sh smoke                a few updates of every config on tiny generated data (CPU, minutes)
#   bash run.sh vit_cifar100         ViT-B/16 on CIFAR-100, baseline and R-Drop (paper: 92.64 / 93.29)
#   bash run.sh resnet50_cat12       ResNet50 (ImageNet weights) on Cat-12, baseline and R-Drop, and result.csv
#   bash run.sh resnet18_cat12       ResNet18 at 64 px from random weights on Cat-12: sized for 2 CPU cores
#   bash run.sh dropblock_cifar10    4-conv CNN with and without DropBlock
#   bash run.sh lenet5_cifar10       LeNet-5 networks A-D (dropout ablation)
#   bash run.sh repconv_cifar10      RepConv network, trained then fused for evaluation
#   bash run.sh all                  every paper run above
#   bash run.sh gpu-check            a few minutes' preflight of this machine's GPUs before a paper run
#   bash run.sh bench                regenerate BENCHMARKS.md and docs/results/bench.md (PyTorch peer: .venv-peer)
#   bash run.sh sweep CONFIG FIELD=V1,V2,... [FIELD2=...] [--config.X=Y ...]
#                                    an ablation: every point of the grid (x SEEDS) into
#                                    $RUNS_DIR/sweep_<config>_<fields>/<field=value,...>/seed_<s>, then its report;
#                                    PLAN=1 trains nothing: one command per run, and a Slurm job array
#   bash run.sh ablation_rdrop_alpha R-Drop's weight alpha on ViT-B/16, CIFAR-100 (docs/SOURCES.md, the alpha sweep)
#   bash run.sh ablation_dropblock   DropBlock's block size x keep probability on the CIFAR-10 CNN (docs/SOURCES.md)
#
# Where things are (environment variables, with defaults; a relative path is taken from the folder you run
# run.sh in, as any path of main.py, and printed absolute):
#   DATA_DIR=./datasets      CIFAR100=$DATA_DIR/cifar-100-python.tar.gz  CIFAR10=$DATA_DIR/cifar-10-python.tar.gz
#                            CAT12_DIR=$DATA_DIR/cat12 (train_list.txt, cat_12_train/, cat_12_test/)
#   WEIGHTS_DIR=./weights    VIT_WEIGHTS=$WEIGHTS_DIR/ViT-B_16.npz  RESNET50_WEIGHTS=$WEIGHTS_DIR/resnet50.pdparams
#   RUNS_DIR=./runs          GPUS=0,1,2,3 trains on those GPUs through paddle.distributed.launch (unset: one process)
#   SEEDS=3                  every variant once per seed 0..SEEDS-1, into <variant>/seed_<n>, one after another;
#                            the report gives mean +- std over seeds and paired differences (unset: one run, seed 0)
# Extra arguments after the experiment name are passed to every run, e.g. --config.train.accum_steps=4
# (a path among them is taken from the project's folder, where the runs start: give it absolute). A sweep's
# CONFIG is one of the project's (configs/...), else a file of the folder you run run.sh in.
set -euo pipefail

# Paths from the folder the user stands in, made absolute before run.sh moves to the project's folder.
CALLER_DIR=$PWD
DATA_DIR=$(realpath -m -- "${DATA_DIR:-datasets}")
WEIGHTS_DIR=$(realpath -m -- "${WEIGHTS_DIR:-weights}")
RUNS_DIR=$(realpath -m -- "${RUNS_DIR:-runs}")
CIFAR100=$(realpath -m -- "${CIFAR100:-$DATA_DIR/cifar-100-python.tar.gz}")
CIFAR10=$(realpath -m -- "${CIFAR10:-$DATA_DIR/cifar-10-python.tar.gz}")
CAT12_DIR=$(realpath -m -- "${CAT12_DIR:-$DATA_DIR/cat12}")
VIT_WEIGHTS=$(realpath -m -- "${VIT_WEIGHTS:-$WEIGHTS_DIR/ViT-B_16.npz}")
RESNET50_WEIGHTS=${RESNET50_WEIGHTS-$WEIGHTS_DIR/resnet50.pdparams}  # set but empty: as resnet18_cat12
case $RESNET50_WEIGHTS in '' | download) ;; *) RESNET50_WEIGHTS=$(realpath -m -- "$RESNET50_WEIGHTS") ;; esac
cd "$(dirname "$0")"

# A scheduler's SIGTERM, `timeout` and `docker stop` signal this script alone. Bash runs a trap only once its
# foreground command has ended, so each python runs in the background while the script waits: the signal is
# passed on at once (the run saves a checkpoint and exits), and the script then stops with the run's code
# instead of starting the next run. (A background child of a script ignores Ctrl-C unless given it back.)
CHILD='' STOPPED_BY=''
pass_on() {
  STOPPED_BY=$1
  [ -z "$CHILD" ] || kill -s "$1" "$CHILD" 2> /dev/null || true
}
trap 'pass_on TERM' TERM
trap 'pass_on INT' INT
trap 'pass_on HUP' HUP
python() {
  local code
  ( trap - INT; exec python "$@" ) &
  CHILD=$!
  wait "$CHILD" && code=0 || code=$?
  while [ "$code" -gt 128 ] && kill -0 "$CHILD" 2> /dev/null; do  # the wait was cut short by a signal
    wait "$CHILD" && code=0 || code=$?
  done
  CHILD=''
  [ -z "$STOPPED_BY" ] || exit $((code ? code : 128 + $(kill -l "$STOPPED_BY")))
  return "$code"
}

# The launcher looks GPUS up among the ids CUDA_VISIBLE_DEVICES lists (a scheduler may have set 4,5,6,7):
# stop before any run, saying which ids there are, rather than with its "'0' is not in list".
check_gpus() {
  local visible=${CUDA_VISIBLE_DEVICES:-all} id
  [ -z "${GPUS:-}" ] || [ "$visible" = all ] && return
  for id in ${GPUS//,/ }; do
    [[ ",$visible," == *",$id,"* ]] && continue
    echo "run.sh: GPUS=$GPUS names GPU $id, which CUDA_VISIBLE_DEVICES=$visible hides: GPUS takes ids from that list (e.g. GPUS=$visible), or unset CUDA_VISIBLE_DEVICES" >&2
    exit 1
  done
}

launch() {
  if [ -n "${GPUS:-}" ]; then
    python -m paddle.distributed.launch --devices "$GPUS" --log_dir "$RUNS_DIR/launch_logs" main.py "$@"
  else
    python main.py "$@"
  fi
}

# run WORKDIR CONFIG [overrides...]: one run into WORKDIR, or with SEEDS=N one per seed into WORKDIR/seed_<n>.
run() {
  local workdir=$1 config=$2 seed
  shift 2
  if [ -z "${SEEDS:-}" ]; then
    run_one "$workdir" "$config" "$@"
  else
    for ((seed = 0; seed < SEEDS; seed++)); do
      run_one "$workdir/seed_$seed" "$config" --config.seed="$seed" "$@"
    done
  fi
}

# run_one WORKDIR CONFIG [overrides...]: the repeatable command. Trains a new run, continues an interrupted
# one (with or without a checkpoint yet), does nothing for a finished one.
run_one() {
  local workdir=$1 config=$2
  shift 2
  launch --config "$config" --workdir "$workdir" --autoresume "$@" "${EXTRA[@]}"
}

report() {  # report OUT_DIR VARIANT_DIR...: one table over the variants' runs (with SEEDS, every seed's)
  local out=$1 dir seed runs=()
  shift
  for dir in "$@"; do
    if [ -z "${SEEDS:-}" ]; then
      runs+=("$dir")
    else
      for ((seed = 0; seed < SEEDS; seed++)); do runs+=("$dir/seed_$seed"); done
    fi
  done
  python main.py --mode report --workdir "$out" --command "$COMMAND" "${runs[@]}"
}

# The run of a variant that predict and export use: the variant's folder, or its seed 0 with SEEDS.
first_run() {
  echo "$1${SEEDS:+/seed_0}"
}

# needs EXPERIMENT...: stop before any run when a file that these experiments read is missing, naming every
# such file at once, with the variable to set (needs_<experiment> lists them).
needs() {
  local experiment
  MISSING=()
  for experiment; do "needs_$experiment"; done
  [ ${#MISSING[@]} -eq 0 ] && return
  printf 'run.sh: %s\n' "${MISSING[@]}" >&2
  exit 1
}

need() {  # need VAR WHAT [FILE]: when $VAR[/FILE] does not exist, add it to the missing files, naming $VAR
  local path=${!1}${3:+/$3}
  [ -e "$path" ] || MISSING+=("$path does not exist: set $1 to $2")
}

need_cifar() {  # need_cifar VAR FILE MD5: as need, unless the extra arguments let Paddle download the tarball
  [[ " ${EXTRA[*]} " == *" --config.data.download=True "* ]] ||
    need "$1" "the official python tarball $2 (https://www.cs.toronto.edu/~kriz/$2, md5 $3), or pass --config.data.download=True"
}

# needs_<experiment>: the files an experiment reads.
needs_vit_cifar100() {
  need_cifar CIFAR100 cifar-100-python.tar.gz eb9058c3a382ffc7106e4002c42a8d85
  need VIT_WEIGHTS "Google's ImageNet-21k ViT-B_16.npz (https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz)"
}

needs_cifar10() {
  need_cifar CIFAR10 cifar-10-python.tar.gz c58f30108f718f92721af3b95e74349a
}

needs_resnet50_cat12() {
  needs_cat12
  if [ -n "$RESNET50_WEIGHTS" ] && [ "$RESNET50_WEIGHTS" != download ]; then
    need RESNET50_WEIGHTS "Paddle's ImageNet resnet50.pdparams (https://paddle-hapi.bj.bcebos.com/models/resnet50.pdparams, \
md5 ca6f485ee1ab0492d38f323885b0ad80), or to 'download' to let Paddle fetch it into its cache"
  fi
}

vit_cifar100() {
  needs vit_cifar100
  local out=$RUNS_DIR/vit_b16_cifar100 data=(--config.data.root="$CIFAR100" --config.model.pretrained="$VIT_WEIGHTS")
  run "$out/baseline" configs/vit_b16_cifar100.py "${data[@]}"
  run "$out/rdrop" configs/vit_b16_cifar100_rdrop.py "${data[@]}"
  report "$out" "$out/baseline" "$out/rdrop"
}

needs_cat12() {
  need CAT12_DIR "the folder holding train_list.txt, cat_12_train/ and cat_12_test/ (the data/ folder of \
https://github.com/nolank128/Cat-Twelve-Classification-Challenge; train_list.txt md5 61cd1dda9400b0a4e3ead24340d5380f)" \
    train_list.txt
}

# cat12 OUT VARIANT WEIGHTS: baseline and R-Drop on Cat-12, then result.csv from the R-Drop run.
cat12() {
  local out=$1 variant=$2
  local data=(--config.data.root="$CAT12_DIR" --config.model.backbone_weights="$3")
  run "$out/baseline" "configs/resnet50_cat12.py$variant" "${data[@]}"
  run "$out/rdrop" "configs/resnet50_cat12_rdrop.py$variant" "${data[@]}"
  python main.py --mode predict --workdir "$(first_run "$out/rdrop")" --config.data.root="$CAT12_DIR" \
    --output "$out/result.csv"
  report "$out" "$out/baseline" "$out/rdrop"
}

resnet50_cat12() {
  needs resnet50_cat12
  if [ -z "$RESNET50_WEIGHTS" ]; then  # set but empty: the scratch variant, as resnet18_cat12
    COMMAND="RESNET50_WEIGHTS= $COMMAND"
    resnet18_cat12
    return
  fi
  cat12 "$RUNS_DIR/resnet50_cat12" '' "$RESNET50_WEIGHTS"
}

resnet18_cat12() {
  needs cat12
  echo "ResNet18 at 64 px from random weights (the Cat-12 configs' :scratch variant)"
  cat12 "$RUNS_DIR/resnet18_cat12_scratch" :scratch ''
}

dropblock_cifar10() {
  needs cifar10
  local out=$RUNS_DIR/dropblock_cnn_cifar10
  run "$out/none" configs/dropblock_cnn_cifar10.py:none --config.data.root="$CIFAR10"
  run "$out/dropblock" configs/dropblock_cnn_cifar10.py --config.data.root="$CIFAR10"
  report "$out" "$out/none" "$out/dropblock"
}

lenet5_cifar10() {
  needs cifar10
  local out=$RUNS_DIR/lenet5_cifar10 network
  for network in A B C D; do
    run "$out/$network" "configs/lenet5_cifar10.py:$network" --config.data.root="$CIFAR10"
  done
  report "$out" "$out"/[ABCD]
}

repconv_cifar10() {
  needs cifar10
  local out=$RUNS_DIR/repconv_cifar10
  run "$out/repconv" configs/repconv_cifar10.py --config.data.root="$CIFAR10"
  python main.py --mode export --workdir "$(first_run "$out/repconv")" --config.data.root="$CIFAR10"
  report "$out" "$out/repconv"
}

demo() {
  local out=$RUNS_DIR/demo
  run "$out/baseline" configs/digits_vit.py
  run "$out/rdrop" configs/digits_vit_rdrop.py
  report "$out" "$out/baseline" "$out/rdrop"
  echo
  echo "Demo finished: checkpoints, metrics and VisualDL logs are in $out/baseline and $out/rdrop."
  echo "Table and curves: $out/report.md (summary for the README: $out/summary.md)"
  echo "VisualDL: visualdl --logdir $out, then open http://localhost:8040/app/scalar (its bare address may open another page)"
}

# Every config for a couple of updates on tiny data generated in the real formats.
smoke() {
  local config variant data
  SMOKE_TMP=$(mktemp -d)
  trap 'rm -rf "$SMOKE_TMP"' EXIT
  local tmp=$SMOKE_TMP
  python -m tools.fakedata "$tmp/data"
  local -A root=([digits]='' [cifar100]="$tmp/data/cifar-100-python.tar.gz"
                 [cifar10]="$tmp/data/cifar-10-python.tar.gz" [cat12]="$tmp/data/cat12")
  while read -r config variant data; do
    [ "$variant" = - ] && variant=''
    echo "== smoke: $config $variant"
    local args=(--config "configs/$config.py:${variant:+$variant,}smoke" --workdir "$tmp/runs/$config$variant")
    [ -n "${root[$data]}" ] && args+=(--config.data.root="${root[$data]}")
    python main.py "${args[@]}" "${EXTRA[@]}"
  done <<'LIST'
digits_vit - digits
digits_vit_rdrop - digits
vit_b16_cifar100 - cifar100
vit_b16_cifar100_rdrop - cifar100
resnet50_cat12 - cat12
resnet50_cat12_rdrop - cat12
dropblock_cnn_cifar10 none cifar10
dropblock_cnn_cifar10 - cifar10
lenet5_cifar10 A cifar10
lenet5_cifar10 B cifar10
lenet5_cifar10 C cifar10
lenet5_cifar10 D cifar10
repconv_cifar10 - cifar10
LIST
  echo "smoke: every config trained, evaluated and checkpointed"
}

# ---- Sweeps (tools/sweep.py): a grid of config values x SEEDS, PLAN=1 for a list of commands and a Slurm array
sweep() {  # sweep CONFIG FIELD=V1,V2,... [...] [--config.X=Y ...] [--reference FIELD=VALUE]
  local config=${1:-} plan=()
  [ $# -gt 0 ] && shift
  # One of the project's configs (configs/...), else a config file of the folder the user stands in
  [ ! -f "${config%%:*}" ] && [ -f "$CALLER_DIR/${config%%:*}" ] && config=$CALLER_DIR/$config
  [ -n "${PLAN:-}" ] && [ "$PLAN" != 0 ] && plan=(--plan)
  python -m tools.sweep --runs-dir "$RUNS_DIR" --seeds "${SEEDS:-1}" --gpus "${GPUS:-}" --command "$COMMAND" \
    "${plan[@]}" ${config:+"$config"} "$@"
}

ablation_rdrop_alpha() {
  needs vit_cifar100
  sweep configs/vit_b16_cifar100_rdrop.py rdrop.alpha=0,0.1,0.3,0.6,1 \
    --config.data.root="$CIFAR100" --config.model.pretrained="$VIT_WEIGHTS" "${EXTRA[@]}"
}

ablation_dropblock() {
  needs cifar10
  sweep configs/dropblock_cnn_cifar10.py model.dropblock.block_size=1,3,5,7 \
    model.dropblock.keep_prob=0.75,0.8,0.85,0.9,0.95,1 --reference model.dropblock.keep_prob=1 \
    --config.data.root="$CIFAR10" "${EXTRA[@]}"
}
# ---- end of sweeps

experiment=${1:-}
[ $# -gt 0 ] && shift
EXTRA=("$@")
if [ -n "${SEEDS:-}" ]; then
  [[ $SEEDS =~ ^[1-9][0-9]*$ ]] || { echo "SEEDS=$SEEDS: give the number of seeds, e.g. SEEDS=3" >&2; exit 1; }
  for arg in "${EXTRA[@]}"; do
    [[ $arg == --config.seed=* ]] && { echo "$arg: SEEDS=$SEEDS sets the seeds (0..$((SEEDS - 1)))" >&2; exit 1; }
  done
fi
check_gpus
# What produced these runs, as the report's summary states it.
COMMAND=$(printf '%q ' bash run.sh "$experiment" "${EXTRA[@]}")
COMMAND=${COMMAND//\\,/,}  # a comma needs no quoting (%q escapes it, braces too, so no brace expansion comes back)
COMMAND="${GPUS:+GPUS=$GPUS }${SEEDS:+SEEDS=$SEEDS }${COMMAND% }"
case "$experiment" in
  demo) demo ;;
  smoke) smoke ;;
  vit_cifar100) vit_cifar100 ;;
  resnet50_cat12) resnet50_cat12 ;;
  resnet18_cat12) resnet18_cat12 ;;
  dropblock_cifar10) dropblock_cifar10 ;;
  lenet5_cifar10) lenet5_cifar10 ;;
  repconv_cifar10) repconv_cifar10 ;;
  all) needs vit_cifar100 resnet50_cat12 cifar10
       vit_cifar100; resnet50_cat12; dropblock_cifar10; lenet5_cifar10; repconv_cifar10 ;;
  bench) python -m bench.run_all --out BENCHMARKS.md ;;
  gpu-check) python -m tools.gpu_check "${EXTRA[@]}" ;;
  sweep) sweep "${EXTRA[@]}" ;;
  ablation_rdrop_alpha) ablation_rdrop_alpha ;;
  ablation_dropblock) ablation_dropblock ;;
  *) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; [ -z "$experiment" ] || { echo "unknown experiment: $experiment" >&2; exit 1; } ;;
esac
