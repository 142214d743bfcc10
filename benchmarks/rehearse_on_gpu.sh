#!/usr/bin/env bash
# Rehearse real profiles on full-size stand-ins, one after another, on a GPU machine that has the `gpu` extra (or
# the wheelhouse: source .whl/install.sh first). Each profile: build its stand-in (vlmrl-standin), run every stage
# of its lineage (vlmrl-rehearse), keep rehearsal.json and the log, then delete the artifacts and the stand-in so the
# next profile has the disk (an 8B lineage writes about 50 GB).
#
#   bash benchmarks/rehearse_on_gpu.sh LOG_DIR [PROFILE ...]
#
# Environment: STANDIN_DIR (default /dev/shm/standins: stand-ins live in memory, so the disk holds the exports),
# WORK_DIR (default /tmp/rehearsal), MATHVISTA_JSON (MathVista's own testmini.json, for real prompt texts),
# GEMMA_VOCAB (a Gemma 3 tokenizer.model or GGUF; without it the Gemma stand-in has a placeholder vocabulary).
set -uo pipefail
log_dir=${1:?usage: rehearse_on_gpu.sh LOG_DIR [PROFILE ...]}
shift
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(qwen3vl-8b qwen25vl-7b gemma3-4b qwen3vl-8b-paper geo3k)
standins=${STANDIN_DIR:-/dev/shm/standins}
work=${WORK_DIR:-/tmp/rehearsal}
mkdir -p "$log_dir" "$standins" "$work"
standin_of() {
  python3 -c "from vlmrl_pipeline.core.standin.rehearsal import REHEARSAL_STANDINS as s; print(s['$1'])"
}
for i in "${!profiles[@]}"; do
  profile=${profiles[$i]}
  key=$(standin_of "$profile")
  log="$log_dir/rehearsal-$profile.log"
  {
    echo "== $profile on stand-in $key ($(date -u +%H:%M:%S))"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    df -h "$work" | tail -1
    if [ ! -f "$standins/$key/config.json" ]; then
      start=$(date +%s)
      extra=()
      [ "$key" = gemma3-4b ] && [ -n "${GEMMA_VOCAB:-}" ] && extra=(--gemma-vocab "$GEMMA_VOCAB")
      python3 -m vlmrl_pipeline.core.standin "$key" "$standins/$key" --device cuda "${extra[@]}" || exit 1
      echo "stand-in $key built in $(( $(date +%s) - start )) s: $(du -sh "$standins/$key" | cut -f1)"
    fi
    args=()
    [ -n "${MATHVISTA_JSON:-}" ] && args=(--mathvista-json "$MATHVISTA_JSON")
    python3 -m vlmrl_pipeline.rehearse "$profile" --model "$standins/$key" --work "$work/$profile" "${args[@]}"
    status=$?
    cp "$work/$profile/rehearsal.json" "$log_dir/rehearsal-$profile.json" 2>/dev/null
    echo "== $profile exit $status ($(date -u +%H:%M:%S))"
    du -sh "$work/$profile/data"/* 2>/dev/null
    rm -rf "$work/$profile/data"
    # The 2B stand-in serves two profiles; drop a stand-in once no later profile needs it.
    needed=0
    for next in "${profiles[@]:$((i + 1))}"; do
      [ "$(standin_of "$next")" = "$key" ] && needed=1
    done
    [ $needed = 1 ] || rm -rf "${standins:?}/$key"
  } 2>&1 | grep --line-buffered -v -E "Warning|warn\(|Loading weights|Writing model shards|it/s\]$" | tee "$log"
done
