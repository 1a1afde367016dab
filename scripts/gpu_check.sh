#!/usr/bin/env bash
# GPU check: the project on a GPU, measured step by step, each row printed as it comes.
#
# Usage (from anywhere; the project root is found from this script's location):
#
#   scripts/gpu_check.sh [MODE ...]
#
#   smoke      imports, then one 4-epoch LSQML job on 512 synthetic patterns, twice
#              (on a GPU a third time with the patterns kept there): seconds, warm-up,
#              and whether each run is identical bit for bit to the first
#   embedded   the default `kedro run` (simulate, reconstruct and evaluate the embedded
#              study): wall time, every job's device, the phase MAE by dose and view
#              (beside GPU_CHECK_REFERENCE's, a manifest of another run, if given)
#   full       one full-scale job (GPU_CHECK_JOB, conf/full) through the pipeline and as
#              bare pty-chi (benchmarks/bare_job.py) on the same file, GPU_CHECK_EPOCHS
#              epochs each: seconds per epoch, their ratio, peak memory
#   pool K     the full-scale study at GPU_CHECK_POOL_EPOCHS epochs with
#              `--runner-params workers_per_gpu=K` (K a number or auto): wall time,
#              mean GPU utilisation, memory per process, the 100-epoch time it predicts
#   dask       the full-scale study through the Dask runner, GPU_CHECK_GROUPS workers
#              sharing each GPU
#   (default: smoke embedded full)
#
# Environment:
#   GPU_CHECK_DEVICE       cuda (default), or cpu: every step rehearsed without a GPU
#   GPU_CHECK_DIR          work folder (default: $OUT/gpu_check when OUT is set, else a
#                          new one from mktemp -d); kept, a log per step under logs/,
#                          results.md the table of every step; a later call with the
#                          same folder reuses its simulated studies
#   GPU_CHECK_TIMEOUT      seconds each step may take (default 600)
#   GPU_CHECK_JOB          the full-scale job (default dose_1e4.baseline.test)
#   GPU_CHECK_EPOCHS       epochs of `full` (default 20)
#   GPU_CHECK_POOL_EPOCHS  epochs of `pool` and `dask` (default 5)
#   GPU_CHECK_GROUPS       Dask workers per GPU (default 3)
#   GPU_CHECK_CONF         an environment folder copied into the scratch project's conf/
#   GPU_CHECK_EMBEDDED_ENV the embedded study's environment (default: conf/base alone)
#   GPU_CHECK_FULL_ENV     the full-scale environment (default full)
#   GPU_CHECK_REFERENCE    a reconstruction_manifest.json to compare `embedded` with
#   GPU_CHECK_PARAMS       extra `--params` for every reconstruction, comma-separated
#   PYTHON                 the interpreter (default python3, else python)
#
# Everything runs in a scratch copy of the project's configuration (conf/base, conf/full,
# logging.yml; an empty conf/local) under the work folder, with this checkout's src/ on
# PYTHONPATH, so it runs where the project is not installed (a bare GPU machine with the
# wheels of ../shared/device) and a developer's conf/local and data/ are neither used
# nor touched. Reconstructions use ptychi_baseline.device=$GPU_CHECK_DEVICE: a job never
# falls back to the CPU silently here. With cuda and no visible GPU it stops at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/scripts/gpu_check.py"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
JOB="${GPU_CHECK_JOB:-dose_1e4.baseline.test}"
EPOCHS="${GPU_CHECK_EPOCHS:-20}"
POOL_EPOCHS="${GPU_CHECK_POOL_EPOCHS:-5}"
GROUPS_N="${GPU_CHECK_GROUPS:-3}"
FULL_ENV="${GPU_CHECK_FULL_ENV:-full}"
STEP_TIMEOUT="${GPU_CHECK_TIMEOUT:-600}"
export KEDRO_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
SAMPLERS=()

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

find_python() {
    PY="${PYTHON:-$(command -v python3 || command -v python || true)}"
    [[ -n "$PY" ]] || die "no python3 or python on PATH (set PYTHON)"
}

# This checkout's src/ first, and every entry absolute: the steps run from the
# scratch project, where a relative entry would point elsewhere.
absolute_pythonpath() {
    local entry path="$ROOT/src"
    local -a entries=()
    IFS=: read -ra entries <<<"${PYTHONPATH:-}"
    for entry in "${entries[@]}"; do
        [[ -n "$entry" ]] || continue
        if [[ -d "$entry" ]]; then
            path+=":$(cd "$entry" && pwd)"
        else
            path+=":$entry"
        fi
    done
    export PYTHONPATH="$path"
}

require_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 \
        || die "no GPU visible: nvidia-smi is not installed or not on PATH. This check needs an NVIDIA GPU (GPU_CHECK_DEVICE=cpu rehearses it)."
    timeout 30 nvidia-smi -L >/dev/null 2>&1 \
        || die "no GPU visible: nvidia-smi -L lists no device (driver not loaded, or CUDA_VISIBLE_DEVICES hides it)."
    timeout 120 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "no GPU visible to torch: torch.cuda.is_available() is False (CPU-only torch build, or CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-}')."
}

header() {
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), device $DEVICE"
    if [[ "$DEVICE" == cuda ]]; then
        timeout 30 nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version \
            --format=csv,noheader | sed 's/^/GPU: /'
    fi
    timeout 120 "$PY" -c 'import os, torch, ptychi, kedro; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), kedro {kedro.__version__}, {os.cpu_count()} CPU cores")'
    echo "work folder: $WORK"
}

scratch_project() {
    PROJECT="$WORK/project"
    mkdir -p "$PROJECT/src" "$PROJECT/conf/local" "$WORK/logs"
    cp "$ROOT/pyproject.toml" "$PROJECT/"
    rm -rf "$PROJECT/conf/base" "$PROJECT/conf/full"
    cp -r "$ROOT/conf/base" "$ROOT/conf/full" "$ROOT/conf/logging.yml" "$PROJECT/conf/"
    if [[ -n "${GPU_CHECK_CONF:-}" ]]; then
        rm -rf "$PROJECT/conf/$(basename "$GPU_CHECK_CONF")"
        cp -r "$GPU_CHECK_CONF" "$PROJECT/conf/"
    fi
}

# logged NAME COMMAND...: the command in the scratch project under the step's timeout,
# its output in logs/NAME.log; its tail on failure.
logged() {
    local name="$1" code=0
    shift
    (cd "$PROJECT" && timeout --kill-after=15 "$STEP_TIMEOUT" "$@") \
        >"$WORK/logs/$name.log" 2>&1 || code=$?
    if ((code != 0)); then
        if ((code == 124 || code == 137)); then
            echo "gpu_check: $name: stopped after its ${STEP_TIMEOUT} s (GPU_CHECK_TIMEOUT)" >&2
        else
            echo "gpu_check: $name failed (exit $code); last lines of $WORK/logs/$name.log:" >&2
            tail -n 25 "$WORK/logs/$name.log" >&2
        fi
    fi
    return "$code"
}

kedro_logged() {
    local name="$1"
    shift
    logged "$name" "$PY" -m kedro "$@"
}

start_samplers() {
    [[ "$DEVICE" == cuda ]] || return 0
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 200 >"$WORK/logs/$1_gpu.csv" 2>/dev/null &
    SAMPLERS+=("$!")
    nvidia-smi --query-compute-apps=pid,used_memory \
        --format=csv,noheader,nounits -lms 500 >"$WORK/logs/$1_apps.csv" 2>/dev/null &
    SAMPLERS+=("$!")
}

stop_samplers() {
    local pid
    for pid in "${SAMPLERS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SAMPLERS=()
}
trap stop_samplers EXIT

now() { date +%s.%N; }
since() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# The data folders of a study (embedded or full), kept apart.
roots() { echo "phase_c_root=$WORK/data/$1/phase_c,phase_d_root=$WORK/data/$1/phase_d"; }

# recon_params SCALE OUT [EPOCHS]: the --params of a reconstruction run; with EPOCHS
# every job runs exactly that many (no stopping rule).
recon_params() {
    local params="ptychi_baseline.device=$DEVICE,artifact_root=$2,$(roots "$1")"
    if [[ -n "${3:-}" ]]; then
        params+=",ptychi_baseline.lsqml.reconstructor_options.num_epochs=$3"
        params+=",ptychi_baseline.convergence.stop=false"
    fi
    [[ -z "${GPU_CHECK_PARAMS:-}" ]] || params+=",$GPU_CHECK_PARAMS"
    echo "$params"
}

# measured NAME TITLE KEDRO_ARGS...: one kedro run with the GPU sampled; its wall time.
measured() {
    local name="$1" started
    shift
    start_samplers "$name"
    started=$(now)
    kedro_logged "$name" "$@" || {
        stop_samplers
        return 1
    }
    WALL=$(since "$started")
    stop_samplers
}

report() {
    local name="$1" title="$2" out="$3"
    shift 3
    "$PY" "$HELPER" report "$out/reconstruction_manifest.json" --wall "$WALL" \
        --gpu-log "$WORK/logs/${name}_gpu.csv" --apps-log "$WORK/logs/${name}_apps.csv" \
        --title "$title ($(date -u +%F), $DEVICE)" --label "$name" \
        --results "$WORK/results.md" "$@"
}

run_smoke() {
    echo "== smoke: one 4-epoch job on 512 synthetic patterns, twice"
    logged smoke "$PY" "$HELPER" smoke --conf "$PROJECT/conf" --device "$DEVICE" \
        --results "$WORK/results.md" || return 1
    grep -a -o 'smoke: .*' "$WORK/logs/smoke.log"
}

run_embedded() {
    local out="$WORK/embedded" env=()
    [[ -z "${GPU_CHECK_EMBEDDED_ENV:-}" ]] || env=(--env "$GPU_CHECK_EMBEDDED_ENV")
    echo "== embedded study: the default kedro run (simulate, reconstruct, evaluate)"
    measured embedded run "${env[@]}" \
        --params "$(recon_params embedded "$out/recon"),reporting_root=$out/report" \
        || return 1
    echo "default kedro run: $WALL s"
    report embedded "The default kedro run" "$out/recon"
    "$PY" "$HELPER" mae "$out/recon/reconstruction_manifest.json" \
        ${GPU_CHECK_REFERENCE:+--reference "$GPU_CHECK_REFERENCE"}
}

run_full() {
    local out="$WORK/full_job" node input started
    node=$("$PY" "$HELPER" to-node "$JOB")
    input=$("$PY" "$HELPER" input "$JOB" --data "$WORK/data/full")
    echo "== one full-scale job (conf/$FULL_ENV), $JOB, $EPOCHS epochs: pipeline, then bare pty-chi"
    if [[ ! -f "$input" ]]; then
        started=$(now)
        kedro_logged full_simulate_one run --env "$FULL_ENV" --pipeline simulate \
            --to-nodes "$node" --params "$(roots full)" || return 1
        echo "full-scale simulation for $JOB: $(since "$started") s"
    fi
    measured full_job run --env "$FULL_ENV" --pipeline ptychi_baseline \
        --namespaces "$JOB" --params "$(recon_params full "$out" "$EPOCHS")" || return 1
    report full_job "One full-scale job through the pipeline" "$out"
    logged full_bare "$PY" "$ROOT/benchmarks/bare_job.py" "$input" "$out/bare.npz" \
        --epochs "$EPOCHS" --device "$DEVICE" --result "$out/bare.json" || return 1
    "$PY" "$HELPER" versus "$out/reconstruction_manifest.json" "$out/bare.json" \
        --namespace "$JOB" --results "$WORK/results.md"
}

simulate_full_study() {
    local started
    [[ -f "$WORK/data/full/simulated" ]] && return 0
    started=$(now)
    kedro_logged full_simulate run --env "$FULL_ENV" --pipeline simulate \
        --params "$(roots full)" || return 1
    echo "full-scale simulation of the study: $(since "$started") s"
    touch "$WORK/data/full/simulated"
}

run_pool() {
    local per_gpu="$1" out="$WORK/pool_$1"
    echo "== full-scale study (conf/$FULL_ENV), $POOL_EPOCHS epochs, workers_per_gpu=$per_gpu"
    simulate_full_study || return 1
    rm -rf "$out"
    measured "pool_$per_gpu" run --env "$FULL_ENV" --pipeline ptychi_baseline \
        --runner-params "workers_per_gpu=$per_gpu" \
        --params "$(recon_params full "$out" "$POOL_EPOCHS")" || return 1
    report "pool_$per_gpu" "Full-scale study, workers_per_gpu=$per_gpu" "$out" \
        --predict-epochs 100
}

run_dask() {
    local out="$WORK/full_dask"
    echo "== full-scale study (conf/$FULL_ENV) through the Dask runner, $GROUPS_N workers per GPU"
    simulate_full_study || return 1
    rm -rf "$out"
    measured full_dask run --env "$FULL_ENV" --pipeline ptychi_baseline \
        --runner fly64_recon.runner.DaskRunner --runner-params "workers_per_gpu=$GROUPS_N" \
        --params "$(recon_params full "$out" "$POOL_EPOCHS")" || return 1
    report full_dask "Full-scale study, Dask with $GROUPS_N workers per GPU" "$out" \
        --predict-epochs 100
}

# The modes and their arguments, checked before anything runs.
parse_modes() {
    MODES=()
    while (($#)); do
        case "$1" in
            smoke | embedded | full | dask) MODES+=("$1") ;;
            pool)
                [[ "${2:-}" =~ ^([1-9][0-9]*|auto)$ ]] \
                    || die "pool needs the workers per GPU: a whole number or auto (pool 4)"
                MODES+=("pool:$2")
                shift
                ;;
            *) die "unknown mode '$1' (smoke, embedded, full, pool K, dask)" ;;
        esac
        shift
    done
    ((${#MODES[@]})) || MODES=(smoke embedded full)
}

main() {
    local mode failed=0
    parse_modes "$@"
    [[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] \
        || die "GPU_CHECK_DEVICE must be cuda or cpu, not '$DEVICE'"
    find_python
    absolute_pythonpath
    [[ "$DEVICE" == cpu ]] || require_gpu
    WORK="${GPU_CHECK_DIR:-${OUT:+$OUT/gpu_check}}"
    WORK="${WORK:-$(mktemp -d -t fly64_gpu_check.XXXXXX)}"
    mkdir -p "$WORK"
    WORK="$(cd "$WORK" && pwd)"
    header
    scratch_project
    for mode in "${MODES[@]}"; do
        case "$mode" in
            smoke) run_smoke ;;
            embedded) run_embedded ;;
            full) run_full ;;
            pool:*) run_pool "${mode#pool:}" ;;
            dask) run_dask ;;
        esac || {
            failed=$((failed + 1))
            echo "gpu_check: $mode did not finish; going on" >&2
        }
    done
    echo
    echo "Results ($WORK/results.md):"
    cat "$WORK/results.md" 2>/dev/null || echo "(no step finished)"
    return "$failed"
}

main "$@"
