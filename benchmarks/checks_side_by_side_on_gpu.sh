#!/usr/bin/env bash
# GPU-machine checks that each take minutes, run side by side in one device command (one H200 holds them: the vLLM
# engines take 0.2-0.3 of the device each, the rest roll out through `generate` or run on the CPU). Set-up as for
# vllm_gpu_tests.sh (source .vllm/device_env.sh and .whl/install.sh, send .tools/llama.cpp-0.3.36, copy the
# checkout to /tmp/repo), then
#   JOBS="dynamic gemma gpu amx" setsid nohup bash benchmarks/checks_side_by_side_on_gpu.sh > /tmp/vlog/session.log 2>&1 &
# Jobs (each logs to /tmp/vlog/<job>.log; "JOB <job> EXIT <rc>" and finally "SESSION DONE" go to session.log):
#   dynamic  dynamic sampling with TRL's colocated vLLM rollouts, then TRL's server mode sharing the GPU
#   gemma    Unsloth fast_inference through lora_adapter on the Gemma-3 4B stand-in
#   qwen25   the same on the Qwen2.5-VL 7B stand-in
#   gpu      test_gpu.py: Unsloth 4-bit GSPO, merged 4-bit, the demo-gpu lineage
#   amx      q8_0 through llama-cpp-python's Llama() on this host's CPU (AMX on the H200 hosts): a full-size
#            Qwen3-VL 2B stand-in exported to q8_0, benchmarks/llama_cpp_amx_check.py, then the mtmd and model-card
#            tests (CPU tests, on this CPU)
cd /tmp/repo || exit 1
mkdir -p /tmp/vlog
export VLMRL_TOOLS_DIR=$PWD/.tools HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONPATH=$PWD:$PYTHONPATH
gpu_pytest() {  # each job its own temporary folder, removed once a test passed
  local name=$1; shift
  mkdir -p "/dev/shm/pt-$name"
  TMPDIR=/dev/shm/pt-$name python3 -m pytest -s -v -p no:cacheprovider -W ignore -o tmp_path_retention_policy=failed \
    --durations=10 "$@"
}
job_dynamic() {
  gpu_pytest dynamic vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -k dynamic_sampling
  local rc=$?
  gpu_pytest server vlmrl_pipeline_tests/test_vllm_server_gpu.py -m gpu -k sharing_one_gpu
  return $(( rc || $? ))
}
job_gemma() { gpu_pytest gemma vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -k "fast_inference and gemma"; }
job_qwen25() { gpu_pytest qwen25 vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -k "fast_inference and qwen25vl"; }
job_gpu() { gpu_pytest gpu vlmrl_pipeline_tests/test_gpu.py -m gpu; }
job_amx() {
  grep -o -w 'amx_[a-z0-9]*' /proc/cpuinfo | sort | uniq -c
  python3 - <<'PY' || return 1
from pathlib import Path
from vlmrl_pipeline.core.export.gguf import export_gguf
from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools
from vlmrl_pipeline.core.standin import build_standin

checkpoint = build_standin("qwen3vl-2b", Path("/dev/shm/amx/standin"), packaging="bf16", device="cuda")
[done] = export_gguf(checkpoint, "/dev/shm/amx/gguf", ["q8_0"], llama_cpp_tools(fetch=False).converter)
print("exported", done.model_file, done.model_info["size_bytes"], done.model_info["tensor_types"])
PY
  python3 benchmarks/llama_cpp_amx_check.py /dev/shm/amx/gguf/model-q8_0.gguf --out /tmp/vlog/amx_check.json
  local rc=$?
  gpu_pytest amx vlmrl_pipeline_tests/test_export_mtmd.py vlmrl_pipeline_tests/test_model_card.py
  return $(( rc || $? ))
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pids=()
for job in ${JOBS:-dynamic gemma gpu amx}; do
  (job_$job > /tmp/vlog/$job.log 2>&1; echo "JOB $job EXIT $? $(date -u +%T)") &
  pids+=($!)
done
(while true; do echo "$(date -u +%T) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) \
load $(cut -d' ' -f1 /proc/loadavg)"; sleep 30; done) > /tmp/vlog/device_usage.log 2>&1 &
monitor=$!
wait "${pids[@]}"
kill $monitor
echo "SESSION DONE $(date -u +%T)"
