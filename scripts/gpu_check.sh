#!/usr/bin/env bash
# One prepared GPU run: the CUDA tests (all three cells, the whole-step CUDA graph among them), the
# benchmark against cuDNN (nn.RNN, nn.LSTM, nn.GRU), shakespeare_gpu.yaml trained on a wall-clock
# budget (quality), the three cells trained side by side for the same budget at about equal
# parameter counts (compare), whole training steps eager and graphed against cuDNN (steps),
# train.py's speed with and without train.cuda_graphs (graphed), and candidates for a GPU record
# trained side by side for 5 minutes with graphs on (record). Each stage has its own time limit and
# writes its output into RESULTS_DIR; a stage that fails does not stop the next. summary.json
# gathers the results.
#
#   bash scripts/gpu_check.sh RESULTS_DIR                     # env,tests,bench,compare: about 7 minutes
#   bash scripts/gpu_check.sh --stages steps,graphed,record RESULTS_DIR   # then these: about 8 minutes
#   bash scripts/gpu_check.sh --dry-run RESULTS_DIR           # every stage at tiny sizes on the CPU
#   bash scripts/gpu_check.sh --stages bench,quality RESULTS_DIR   # only some stages (a rerun)
#
# Exits non-zero if any stage failed. Needs no network and no install: the package is found
# through PYTHONPATH (the image's torch, numpy, pyyaml, tensorboard, tqdm and pytest suffice);
# the env stage records whether `pip install -e . --no-deps --no-build-isolation` would work too.
# The corpus must be at data/tinyshakespeare.txt (it is sha-checked; a GPU machine cannot fetch it).
set -uo pipefail

usage="usage: scripts/gpu_check.sh [--dry-run] [--stages env,tests,bench,quality,compare,steps,graphed,record] RESULTS_DIR"
all_stages="env,tests,bench,quality,compare,steps,graphed,record"
if [ "${1:-}" != --run-stage ]; then
    dry=0
    stages="env,tests,bench,compare"  # quality (part 1's) ran on an H200 on 2026-11-26
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry=1; shift ;;
            --stages)
                # ${2:?} would print bash's own message and exit 1: a missing value is bad input (2).
                [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: --stages needs a value, e.g. --stages bench,quality; $usage" >&2; exit 2; }
                stages="$2"; shift 2 ;;
            -h|--help) echo "$usage"; exit 0 ;;
            -*) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
            *) break ;;
        esac
    done
    [ $# -eq 1 ] || { echo "error: $usage" >&2; exit 2; }
    [ -n "$1" ] || { echo "error: RESULTS_DIR is an empty path; $usage" >&2; exit 2; }
    for s in ${stages//,/ }; do
        case ",$all_stages," in *",$s,"*) ;; *) echo "error: unknown stage $s; $usage" >&2; exit 2 ;; esac
    done
    mkdir -p "$1" 2>/dev/null || { echo "error: cannot create results folder $1" >&2; exit 2; }
    results="$(cd "$1" && pwd)"
    self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
    cd "$(dirname "$self")/.."
    export dry results self
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
fi
py="${PYTHON:-python3}"

# Stage time limits (s): they bound the whole run to under 10 minutes even when a stage hangs.
# The quality stage trains for the config's train.max_minutes (a dry run: 1.2 seconds, as every dry training run).
if [ "$dry" = 1 ]; then
    device=cpu; limit_env=60; limit_tests=300; limit_bench=300; limit_quality=300; limit_compare=300
    limit_steps=300; limit_graphed=300; limit_record=300
else
    device=cuda; limit_env=45; limit_tests=200; limit_bench=200; limit_quality=290; limit_compare=200
    limit_steps=120; limit_graphed=100; limit_record=360
fi
run_stage() {  # name limit_s command...: run with a time limit, log its output, record rc and time
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s.%N)
    echo "== stage $name (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" >"$results/$name.log" 2>&1
    rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"limit_s\": $limit}" >>"$results/stages.jsonl"
    echo "   rc=$rc in ${secs}s (log: $results/$name.log)"
}

stage_env() {
    "$py" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
print("machine:", platform.machine())
import charrnn_torch
print("charrnn_torch from", charrnn_torch.__file__)
EOF
    local rc=$?
    if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
    # Would an editable install work with no network? (--dry-run changes nothing.)
    if "$py" -m pip install --dry-run --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1; then
        echo "pip install -e . --no-deps --no-build-isolation: works"
    else
        echo "pip install -e . --no-deps --no-build-isolation: fails (PYTHONPATH=. is what this script uses)"
    fi
    return $rc
}

stage_tests() {
    "$py" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$results/tests.xml" tests
}

stage_bench() {
    if [ "$dry" = 1 ]; then
        "$py" scripts/bench.py --device cpu --shapes smoke --precisions fp32,tf32,bf16 --cells rnn,lstm,gru \
            --repeats 1 --no-memory --json "$results/bench.json"
    else
        "$py" scripts/bench.py --device cuda --cells rnn,lstm,gru --json "$results/bench.json"
    fi
}

stage_steps() {  # whole training steps, eager and as one CUDA graph, against cuDNN eager and graphed
    if [ "$dry" = 1 ]; then
        "$py" scripts/bench.py --device cpu --train-steps --shapes smoke --cells rnn,lstm,gru --repeats 1 \
            --no-memory --json "$results/steps.json"
    else
        "$py" scripts/bench.py --device cuda --train-steps --cells rnn,lstm,gru --repeats 3 --json "$results/steps.json"
    fi
}

# The shipped config, and beside it one variant, trained at the same time on the same GPU: each
# gets its own budget of training time, so the two share the card (their chars/s say how much).
variant_overrides=(model.hidden_size=1024)

# Trains shakespeare_gpu.yaml once per NAME=OVERRIDES pair given, all at the same time on the
# same GPU (each gets its own budget of training time, so they share the card; their chars/s say
# how much), then samples each run's best.pt on the GPU and on the CPU with the same seed.
train_side_by_side() {
    local corpus=data/tinyshakespeare.txt
    local -a tiny=()
    if [ "$dry" = 1 ]; then
        corpus="$results/tiny_corpus.txt"
        # Written once: rewriting it would make the runs side by side rebuild its cache at once.
        [ -f "$corpus" ] || "$py" -c "import sys; open(sys.argv[1], 'w').write(''.join(
            'ROMEO: the quick brown fox jumps over the lazy dog. '[i:] + '\n' for i in range(40)) * 20)" "$corpus"
        tiny=(device=cpu model.hidden_size=32 train.batch_size=4 train.seq_len=16 train.eval_interval=50
              train.sample_interval=50 train.log_interval=5 train.max_minutes=0.02)
    elif [ ! -f "$corpus" ]; then
        echo "error: $corpus is missing; copy it into the repository (a GPU machine cannot fetch it)" >&2
        return 2
    fi
    local rc=0 pids=() names=() run
    for run in "$@"; do
        local name=${run%%=*} extra=()
        read -r -a extra <<<"${run#*=}"
        names+=("$name")
        "$py" scripts/train.py --config shakespeare_gpu.yaml --no-progress data.path="$corpus" \
            out_dir="$results/runs/$name" "${extra[@]}" "${tiny[@]}" >"$results/train_$name.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    local dev devs=("$device")
    [ "$device" = cpu ] || devs+=(cpu)
    for name in "${names[@]}"; do
        for dev in "${devs[@]}"; do  # the same seed on both devices: the texts should agree
            "$py" scripts/sample.py --checkpoint "$results/runs/$name" --prime "ROMEO:" --length 300 \
                --temperature 0.8 --seed 1 --device "$dev" >"$results/sample_${name}_$dev.txt" || rc=$?
        done
    done
    return $rc
}

stage_quality() {  # the shipped config, and beside it one variant
    train_side_by_side gpu= "gpu_variant=${variant_overrides[*]}"
}

# The three cells at about 1.9M parameters each (2 layers: tanh H=768, LSTM H=384, GRU H=448),
# the same 2-minute budget, side by side; scripts/plot.py draws their curves afterwards.
stage_compare() {
    local budget=train.max_minutes=2
    [ "$dry" = 1 ] && budget=train.max_minutes=0.02
    train_side_by_side "cmp_rnn=model.cell=rnn model.hidden_size=768 $budget" \
        "cmp_lstm=model.cell=lstm model.hidden_size=384 $budget" \
        "cmp_gru=model.cell=gru model.hidden_size=448 $budget"
}

stage_graphed() {  # train.py's own speed, eager then graphed, one after the other on the card
    local rc=0 mode budget=train.max_minutes=0.6 cuda_graphs
    [ "$dry" = 1 ] && budget=train.max_minutes=0.02
    for mode in off on; do
        cuda_graphs=$mode
        [ "$dry" = 1 ] && [ "$mode" = on ] && cuda_graphs=auto  # a CPU has no graphs: auto says so and runs eagerly
        train_side_by_side "graphs_$mode=train.cuda_graphs=$cuda_graphs $budget train.eval_interval=100000" || rc=$?
    done
    return $rc
}

# Candidates for the GPU record (<= 5 minutes of training), side by side with graphs on: at graphed
# speed 5 minutes is hundreds of epochs, so regularisation, not speed, decides.
stage_record() {
    local budget=train.max_minutes=5 graphs=train.cuda_graphs=on
    [ "$dry" = 1 ] && budget=train.max_minutes=0.02 && graphs=train.cuda_graphs=auto
    train_side_by_side \
        "rec_gru=model.cell=gru model.hidden_size=1024 model.dropout=0.4 train.weight_decay=0.1 $budget $graphs" \
        "rec_lstm=model.cell=lstm model.hidden_size=1024 model.dropout=0.4 train.weight_decay=0.1 $budget $graphs" \
        "rec_gru3=model.cell=gru model.num_layers=3 model.hidden_size=768 model.dropout=0.4 $budget $graphs"
}

if [ "${1:-}" = --run-stage ]; then  # one stage, in its own process so that timeout can stop it
    "stage_$2"
    exit $?
fi

echo "{\"dry_run\": $dry, \"device\": \"$device\", \"variant\": \"${variant_overrides[*]}\"}" >"$results/run.json"
: >"$results/stages.jsonl"
for s in ${stages//,/ }; do
    limit="limit_$s"
    run_stage "$s" "${!limit}" bash "$self" --run-stage "$s"
done
"$py" scripts/gpu_summary.py "$results"
