# The vLLM GPU tests, then the 2B evaluation benchmark, on the GPU machine in the background (together they outlast
# one 10-minute command). Set up first: source .vllm/device_env.sh (the vLLM bundle) and .whl/install.sh (the RL
# wheelhouse), copy the checkout to /tmp/repo, then:  setsid bash benchmarks/vllm_gpu_tests.sh [PYTEST -k EXPR] > LOG
cd /tmp/repo
export VLMRL_TOOLS_DIR=$PWD/.tools HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONPATH=$PWD:$PYTHONPATH
date -u
python3 -c "import torch, vllm, transformers, trl, peft, dagster; print({m.__name__: m.__version__ for m in (torch, vllm, transformers, trl, peft, dagster)})"
python3 -m pytest vlmrl_pipeline_tests/test_vllm_gpu.py -m gpu -s -p no:cacheprovider -W ignore ${1:+-k "$1"}
echo "pytest exit $?"
date -u
python3 benchmarks/vllm_benchmark.py --part eval --models 2b --deadline-s 420 --out /tmp/vlog/vllm_eval_2b.json
echo "benchmark exit $?"
date -u
