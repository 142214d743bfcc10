# The vLLM benchmarks and GPU tests on the GPU machine, one stage after another, in the background: together they
# outlast one 10-minute device command. Set up first: source .vllm/device_env.sh (the vLLM bundle) and
# .whl/install.sh (the RL wheelhouse), copy the checkout to /tmp/repo, then
#   setsid nohup bash benchmarks/vllm_gpu_tests.sh [STAGE ...] > /tmp/vlog/session.log 2>&1 &
# and poll /tmp/vlog (each stage writes STAGE.log, the benchmarks STAGE.json; "ALL DONE" ends session.log).
# fast-tests materializes lora_adapter, whose first step checks the GGUF export's tools: send .tools/llama.cpp-0.3.36
# along (vlmrl-fetch-tools), or it is refused before training. FAST_TESTS_K picks its tests (pytest -k).
# Stages: eval8b eval2b gspo2b tests probe probe-as-trl mismatch fast-tests seed-batch dynamic-sampling (default: the
# first four; tests includes dynamic-sampling's test, which runs alone in its own stage).
cd /tmp/repo || exit 1
export VLMRL_TOOLS_DIR=$PWD/.tools HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONPATH=$PWD:$PYTHONPATH
mkdir -p /tmp/vlog
python3 -c "import torch, vllm, transformers, trl, peft, dagster; print({m.__name__: m.__version__ for m in (torch, vllm, transformers, trl, peft, dagster)})"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
bench() { python3 benchmarks/vllm_benchmark.py --work-dir /tmp/vllm_bench "$@"; }
# The probes' stand-in, built on the GPU in its own process (seconds), so the probe's vLLM starts before any CUDA use.
probe() { python3 -c "from vlmrl_pipeline.core.standin import build_standin as b; b('qwen3vl-2b', \
            '/tmp/vllm_probe/standin-qwen3vl-2b', packaging='bf16', device='cuda')" && \
          python3 benchmarks/logp_gap_probe.py --standin qwen3vl-2b --vllm --prompts 8 --work-dir /tmp/vllm_probe "$@"; }
for stage in ${@:-eval8b eval2b gspo2b tests}; do
  echo "== $stage start $(date -u +%T)"
  case $stage in
    eval8b) bench --part eval --models 8b --deadline-s 540 --out /tmp/vlog/$stage.json ;;
    eval2b) bench --part eval --models 2b --deadline-s 420 --out /tmp/vlog/$stage.json ;;
    # The seed's batch: 8 completions a micro-batch x 4 accumulation steps = 8 prompts x 4 generations per rollout.
    gspo2b) bench --part gspo --gspo-model 2b --batch 8 --grad-accum 4 --num-generations 4 \
              --max-completion-length 512 --deadline-s 540 --out /tmp/vlog/$stage.json ;;
    # The rollout/train gap per completion against its prompt's left padding: varied prompt lengths, then equal ones.
    mismatch) for v in varied equal; do bench --part gspo --gspo-model 2b --engines vllm --batch 8 --grad-accum 4 \
                --max-completion-length 64 --gspo-warmup 1 --steps 1 $([ $v = equal ] && echo --equal-prompts) \
                --deadline-s 280 --out /tmp/vlog/${stage}_$v.json || exit 1; done ;;
    probe) probe --out /tmp/vlog/$stage.json ;;
    probe-as-trl) probe --vllm-as-trl --out /tmp/vlog/$stage.json ;;
    # The seeds' path: Unsloth fast_inference through the lora_adapter asset (demo model, Qwen3-VL 2B stand-in).
    fast-tests) python3 -m pytest vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -s -p no:cacheprovider -W ignore \
             -k "${FAST_TESTS_K:-fast_inference}" --durations=10 ;;
    # The seed's micro-step on the 8B stand-in, four paths side by side, 24 GiB cap (gspo_benchmark.py --seed-batch).
    seed-batch) python3 benchmarks/gspo_benchmark.py --seed-batch --batch 8 --grad-accum 4 --num-generations 4 \
             --max-completion-length 1024 --image-size 512 --warmup 1 --steps 1 --deadline-s ${SEED_BATCH_DEADLINE:-1500} \
             --seed-configs ${SEED_CONFIGS:-unsloth-4bit-vllm,transformers-bf16-vllm,unsloth-16bit-vllm,unsloth-4bit} \
             --out /tmp/vlog/$stage.json --work-dir /tmp/seed_batch ;;
    # Dynamic sampling (core.training.dynamic_sampling) with TRL's colocated vLLM rollouts on the warm-started demo model.
    dynamic-sampling) python3 -m pytest vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -s -p no:cacheprovider -W ignore \
             -k dynamic_sampling --durations=10 ;;
    tests) python3 -m pytest vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -s -p no:cacheprovider -W ignore \
             --durations=10 ;;
    *) echo "unknown stage $stage"; false ;;
  esac > /tmp/vlog/$stage.log 2>&1
  echo "== $stage exit $? $(date -u +%T)"
done
echo "ALL DONE $(date -u +%T)"
