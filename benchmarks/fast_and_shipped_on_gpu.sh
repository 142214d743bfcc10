#!/usr/bin/env bash
# One GPU-machine session, three jobs side by side (one H200 holds them all: the fast tests' engines take 0.3 of
# the device each, one at a time; the rehearsals roll out through `generate`):
#   fast     the seeds' path (Unsloth fast_inference) through lora_adapter: vllm_gpu_tests.sh fast-tests
#   <PROF>   each profile's whole rehearsal on its stand-in, ending with the `shipped` stage (merged_records,
#            gguf_records through llama.cpp's mtmd with the image, the report), without the vLLM bundle on the path
# Set-up, as for vllm_gpu_tests.sh: source .vllm/device_env.sh and .whl/install.sh (with llama-cpp-python and
# diskcache added), send .tools/llama.cpp-0.3.36, copy the checkout to /tmp/repo, then
#   setsid nohup bash benchmarks/fast_and_shipped_on_gpu.sh > /tmp/vlog/session.log 2>&1 &
# Environment: SERVER_TEST=1 (the one-GPU server-mode test after the fast tests), FAST_TESTS_K (pytest -k of the fast tests; default all fast_inference ones but Qwen2.5-VL 7B's), PROFILES (default "qwen3vl-8b gemma3-4b"),
# SHM_PROFILES (profiles whose artifacts go to /dev/shm: the disk (64 GB) holds one 8B lineage, not two).
# Logs in /tmp/vlog: fast-tests.log, rehearsal/rehearsal-<profile>.{log,json}; "SESSION DONE" ends session.log.
cd /tmp/repo || exit 1
mkdir -p /tmp/vlog/rehearsal
export VLMRL_TOOLS_DIR=$PWD/.tools HF_HUB_DISABLE_PROGRESS_BARS=1
# The rehearsals' path: the checkout and the wheelhouse, not the vLLM bundle (rollout_engine=auto -> generate,
# as in the earlier rehearsals, and the profile's engine share would claim 0.625 of this 141 GB device).
no_vllm_path=$PWD:$(echo "$PYTHONPATH" | tr ':' '\n' | grep -v vllmenv | paste -sd:)
df -h /tmp /dev/shm | tail -2
pids=()
# The fast tests' stand-ins in memory, each test's folder removed once it passed: the disk holds the 8B lineage.
mkdir -p /dev/shm/pytmp
(TMPDIR=/dev/shm/pytmp PYTEST_ADDOPTS="-v -o tmp_path_retention_policy=failed" \
   FAST_TESTS_K=${FAST_TESTS_K:-fast_inference and not qwen25vl} \
   bash benchmarks/vllm_gpu_tests.sh fast-tests > /tmp/vlog/fast_session.log 2>&1; echo "FAST DONE $(date -u +%T)"
 # Then, with SERVER_TEST=1, TRL's server mode with engine and trainer sharing the GPU (the fast tests' engines gone).
 if [ "${SERVER_TEST:-0}" = 1 ]; then
   mkdir -p /dev/shm/pt-server
   PYTHONPATH=$PWD:$PYTHONPATH TMPDIR=/dev/shm/pt-server python3 -m pytest -s -v -p no:cacheprovider -W ignore \
     -o tmp_path_retention_policy=failed vlmrl_pipeline_tests/test_vllm_server_gpu.py -m gpu -k sharing_one_gpu \
     > /tmp/vlog/server.log 2>&1
   echo "SERVER EXIT $? $(date -u +%T)"
 fi) &
pids+=($!)
# Each rehearsal on its own share of the cores (taskset): llama.cpp's threads spin while they wait, and in run 2 two
# gguf_records each taking all 16 cores (load 32) had not finished 8 samples in 10 minutes.
read -r -a profile_list <<< "${PROFILES:-qwen3vl-8b gemma3-4b}"
cores=$(nproc); share=$(( cores / ${#profile_list[@]} ))
for i in "${!profile_list[@]}"; do
  profile=${profile_list[$i]}
  cpus="$(( i * share ))-$(( (i + 1) * share - 1 ))"
  work=/tmp/rehearsal
  [[ " ${SHM_PROFILES:-gemma3-4b} " == *" $profile "* ]] && work=/dev/shm/rehearsal
  (PYTHONPATH=$no_vllm_path WORK_DIR=$work STANDIN_DIR=/dev/shm/standins \
     taskset -c "$cpus" bash benchmarks/rehearse_on_gpu.sh /tmp/vlog/rehearsal "$profile" > /tmp/vlog/session-$profile.log 2>&1
   echo "REHEARSAL $profile DONE $(date -u +%T)") &
  pids+=($!)
done
# The device's memory and load every 30 s, to see that the three jobs fit side by side.
(while true; do echo "$(date -u +%T) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) \
load $(cut -d' ' -f1 /proc/loadavg) shm $(df -h /dev/shm | awk 'NR==2{print $3}') disk $(df -h /tmp | awk 'NR==2{print $3}')"
   sleep 30; done) > /tmp/vlog/device_usage.log 2>&1 &
monitor=$!
wait "${pids[@]}"
kill $monitor
echo "SESSION DONE $(date -u +%T)"
