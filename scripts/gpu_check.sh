#!/usr/bin/env bash
# GPU check: per-job wall time, epochs per second and peak GPU memory on this GPU.
#
# Usage (from anywhere; the project root is found from this script's location):
#
#   scripts/gpu_check.sh [MODE ...]
#
#   embedded     simulate the embedded study (conf/base) and reconstruct its 18 jobs
#   full         simulate one full-scale file (conf/full) and reconstruct that one job
#   concurrent   simulate the full-scale study, then run its 18 jobs one at a time and
#                as GPU_CHECK_GROUPS concurrent `kedro run --namespaces` processes
#   dask         the full-scale study through the Dask runner, GPU_CHECK_GROUPS workers
#                sharing each GPU (`--runner-params workers_per_gpu=...`)
#   (default: embedded full)
#
# Environment:
#   GPU_CHECK_DIR       work folder (default: a new one from mktemp -d); kept afterwards,
#                       with every run's log under logs/
#   GPU_CHECK_JOB       the full-scale job (default dose_1e4.baseline.test)
#   GPU_CHECK_GROUPS    concurrent processes (`concurrent`) or workers per GPU (`dask`);
#                       default 3
#   GPU_CHECK_EPOCHS    epochs of the full-scale jobs (default: conf/full's)
#   GPU_CHECK_FULL_ENV  the full-scale environment (default full)
#   GPU_CHECK_PARAMS    extra `--params` for every reconstruction, comma-separated, e.g.
#                       ptychi_baseline.lsqml.data_options.save_data_on_device=true
#
# Everything runs in a scratch copy of the project's configuration (conf/base, conf/full,
# logging.yml; an empty conf/local) under the work folder, so a developer's conf/local
# and data/ are neither used nor touched. Reconstructions use device=cuda: a job never
# falls back to the CPU silently here. Without a visible GPU the script stops at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/scripts/gpu_check.py"
JOB="${GPU_CHECK_JOB:-dose_1e4.baseline.test}"
GROUPS_N="${GPU_CHECK_GROUPS:-3}"
FULL_ENV="${GPU_CHECK_FULL_ENV:-full}"
export KEDRO_DISABLE_TELEMETRY=1
SAMPLER_PID=""

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

require_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 \
        || die "no GPU visible: nvidia-smi is not installed or not on PATH. This check needs an NVIDIA GPU."
    nvidia-smi -L >/dev/null 2>&1 \
        || die "no GPU visible: nvidia-smi -L lists no device (driver not loaded, or CUDA_VISIBLE_DEVICES hides it)."
    python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "no GPU visible to torch: torch.cuda.is_available() is False (CPU-only torch build, or CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-}')."
}

header() {
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        | sed 's/^/GPU: /'
    python -c 'import torch, ptychi, kedro; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), kedro {kedro.__version__}, CPU cores", __import__("os").cpu_count())'
    echo "work folder: $WORK"
}

scratch_project() {
    local project="$WORK/project"
    mkdir -p "$project/src" "$project/conf/local" "$WORK/logs"
    cp "$ROOT/pyproject.toml" "$project/"
    rm -rf "$project/conf/base" "$project/conf/full"
    cp -r "$ROOT/conf/base" "$ROOT/conf/full" "$ROOT/conf/logging.yml" "$project/conf/"
    PROJECT="$project"
}

# kedro LOGNAME ARGS...: run kedro in the scratch project; the log goes to logs/.
kedro_logged() {
    local name="$1"
    shift
    if ! (cd "$PROJECT" && python -m kedro "$@") >"$WORK/logs/$name.log" 2>&1; then
        echo "gpu_check: kedro $* failed; last lines of $WORK/logs/$name.log:" >&2
        tail -n 30 "$WORK/logs/$name.log" >&2
        return 1
    fi
}

start_sampler() {
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 500 >"$1" 2>/dev/null &
    SAMPLER_PID=$!
}

stop_sampler() {
    if [[ -n "$SAMPLER_PID" ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
    fi
}
trap stop_sampler EXIT

# recon_params ARTIFACT_ROOT [EPOCHS]: the --params of a reconstruction run.
recon_params() {
    local params="ptychi_baseline.device=cuda,artifact_root=$1"
    if [[ -n "${2:-}" ]]; then
        params+=",ptychi_baseline.lsqml.reconstructor_options.num_epochs=$2"
    fi
    if [[ -n "${GPU_CHECK_PARAMS:-}" ]]; then
        params+=",$GPU_CHECK_PARAMS"
    fi
    echo "$params"
}

now() { date +%s.%N; }
since() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# measured NAME OUT TITLE KEDRO_ARGS...: one kedro run with the GPU sampled, then the
# report of its manifest (OUT/reconstruction_manifest.json).
measured() {
    local name="$1" out="$2" title="$3" started wall
    shift 3
    start_sampler "$WORK/logs/${name}_gpu.csv"
    started=$(now)
    kedro_logged "$name" "$@"
    wall=$(since "$started")
    stop_sampler
    python "$HELPER" report "$out/reconstruction_manifest.json" --wall "$wall" \
        --gpu-log "$WORK/logs/${name}_gpu.csv" --title "$title ($(date -u +%F))"
}

run_embedded() {
    local out="$WORK/embedded"
    echo "== embedded study (conf/base): simulate, then 18 jobs on the GPU"
    kedro_logged embedded_simulate run --pipeline simulate
    measured embedded "$out" "Embedded study on the GPU" \
        run --pipeline ptychi_baseline --params "$(recon_params "$out")"
}

run_full_job() {
    local out="$WORK/full_job" node started
    node=$(cd "$PROJECT" && python "$HELPER" to-node "$JOB" 2>>"$WORK/logs/helper.log")
    echo "== one full-scale job (conf/$FULL_ENV): $JOB (simulating up to $node first)"
    started=$(now)
    kedro_logged full_simulate_one run --env "$FULL_ENV" --pipeline simulate --to-nodes "$node"
    echo "full-scale simulation for $JOB: $(since "$started") s"
    measured full_job "$out" "One full-scale job on the GPU" \
        run --env "$FULL_ENV" --pipeline ptychi_baseline --namespaces "$JOB" \
        --params "$(recon_params "$out" "${GPU_CHECK_EPOCHS:-}")"
}

simulate_full_study() {
    local started
    [[ -f "$WORK/full_study_simulated" ]] && return 0
    started=$(now)
    kedro_logged full_simulate run --env "$FULL_ENV" --pipeline simulate
    echo "full-scale simulation of the study: $(since "$started") s"
    touch "$WORK/full_study_simulated"
}

run_concurrent() {
    local seq="$WORK/full_sequential" par="$WORK/full_concurrent" started seq_wall par_wall
    local -a pids=() groups=()
    echo "== full-scale study (conf/$FULL_ENV): every job one at a time, then $GROUPS_N processes at once"
    simulate_full_study

    start_sampler "$WORK/logs/full_sequential_gpu.csv"
    started=$(now)
    kedro_logged full_sequential run --env "$FULL_ENV" --pipeline ptychi_baseline \
        --params "$(recon_params "$seq" "${GPU_CHECK_EPOCHS:-}")"
    seq_wall=$(since "$started")
    stop_sampler

    mapfile -t groups < <(cd "$PROJECT" && python "$HELPER" groups \
        --conf "$PROJECT/conf" --env "$FULL_ENV" --groups "$GROUPS_N" 2>>"$WORK/logs/helper.log")
    start_sampler "$WORK/logs/full_concurrent_gpu.csv"
    started=$(now)
    # Share the CPU cores between the processes: torch's default (every core in each)
    # oversubscribes the host-side work (loading, hashing, figures, batch bookkeeping).
    local threads="${OMP_NUM_THREADS:-$(( $(nproc) / ${#groups[@]} > 0 ? $(nproc) / ${#groups[@]} : 1 ))}"
    for index in "${!groups[@]}"; do
        OMP_NUM_THREADS="$threads" kedro_logged "full_concurrent_$index" run \
            --env "$FULL_ENV" --pipeline ptychi_baseline --namespaces "${groups[$index]}" \
            --params "$(recon_params "$par" "${GPU_CHECK_EPOCHS:-}")" &
        pids+=("$!")
    done
    echo "$GROUPS_N processes started, OMP_NUM_THREADS=$threads each"
    local failed=0
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=$((failed + 1))
    done
    par_wall=$(since "$started")
    stop_sampler
    ((failed == 0)) || echo "gpu_check: $failed concurrent process(es) failed" >&2

    python "$HELPER" report "$seq/reconstruction_manifest.json" --wall "$seq_wall" \
        --gpu-log "$WORK/logs/full_sequential_gpu.csv" \
        --title "Full-scale study, one job at a time ($(date -u +%F))"
    python "$HELPER" report "$par/reconstruction_manifest.json" --wall "$par_wall" \
        --gpu-log "$WORK/logs/full_concurrent_gpu.csv" \
        --title "Full-scale study, $GROUPS_N processes at once ($(date -u +%F))"
    python "$HELPER" compare --title "Full-scale study: sequential vs concurrent" \
        --row "sequential,$seq_wall,$seq/reconstruction_manifest.json,$WORK/logs/full_sequential_gpu.csv" \
        --row "$GROUPS_N at once,$par_wall,$par/reconstruction_manifest.json,$WORK/logs/full_concurrent_gpu.csv"
    return "$failed"
}

run_dask() {
    local out="$WORK/full_dask"
    echo "== full-scale study (conf/$FULL_ENV) through the Dask runner, $GROUPS_N workers per GPU"
    simulate_full_study
    measured full_dask "$out" "Full-scale study, Dask with $GROUPS_N workers per GPU" \
        run --env "$FULL_ENV" --pipeline ptychi_baseline \
        --runner fly64_recon.runner.DaskRunner --runner-params "workers_per_gpu=$GROUPS_N" \
        --params "$(recon_params "$out" "${GPU_CHECK_EPOCHS:-}")"
}

main() {
    local -a modes=("$@")
    ((${#modes[@]})) || modes=(embedded full)
    for mode in "${modes[@]}"; do
        case "$mode" in
            embedded | full | concurrent | dask) ;;
            *) die "unknown mode '$mode' (embedded, full, concurrent, dask)" ;;
        esac
    done
    require_gpu
    WORK="${GPU_CHECK_DIR:-$(mktemp -d -t fly64_gpu_check.XXXXXX)}"
    mkdir -p "$WORK"
    header
    scratch_project
    for mode in "${modes[@]}"; do
        case "$mode" in
            embedded) run_embedded ;;
            full) run_full_job ;;
            concurrent) run_concurrent ;;
            dask) run_dask ;;
        esac
    done
}

main "$@"
