# Every target creates the virtualenv and installs the project on first use, so each works on
# a fresh clone where only python3 exists.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench bench-peers bench-obd obd serve clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,parquet,dask]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/banditrec demo

test: lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# ruff (lint and format) and mypy over banditrec, simulator and studies; settings in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

# A peer for bench/run.py in its own venv, never a banditrec dependency: Open Bandit Pipeline
# 0.5.7 (the other peer, implicit, is a dependency since the latent factors). obp's metadata
# says python<3.11 and pins torch==1.12 (no 3.11 build), so: the machine's CPU torch 2.13.0 first, obp's runtime deps at
# its pins where 3.11 wheels exist (numpy 1.23.5, scipy 1.9.3, scikit-learn 1.1.3, pandas
# 1.5.2), then obp itself without resolving its pins.
# pip check then lists torch, Pillow, PyYAML, pingouin and pyieoe: none is imported by obp.ope.
bench-peers:
	test -f bench/.peers-venv/.installed || { \
	  { test -x bench/.peers-venv/bin/python || $(PY) -m venv bench/.peers-venv; } && \
	  bench/.peers-venv/bin/python -m pip install --quiet --upgrade pip && \
	  bench/.peers-venv/bin/python -m pip install --quiet torch==2.13.0 && \
	  bench/.peers-venv/bin/python -m pip install --quiet --only-binary :all: numpy==1.23.5 \
	    scipy==1.9.3 scikit-learn==1.1.3 pandas==1.5.2 'matplotlib>=3.4.3,<3.9' \
	    'seaborn>=0.11.2,<0.12' 'tqdm>=4.62.2' 'PyYAML>=6.0' 'mypy-extensions>=0.4.3,<0.5' && \
	  bench/.peers-venv/bin/python -m pip install --quiet --no-deps --ignore-requires-python obp==0.5.7 && \
	  bench/.peers-venv/bin/python -c 'from obp.ope import InverseProbabilityWeighting, \
	    SelfNormalizedInverseProbabilityWeighting, DoublyRobust, OffPolicyEvaluation' && \
	  touch bench/.peers-venv/.installed; }

# The Open Bandit Dataset's small sample (10,000 rows per log; ZOZOTOWN, Saito et al. 2021) as it
# ships inside obp 0.5.7's source distribution: data only, never obp's code. data/obd/ keeps
# obp's own layout -- {random,bts}/{all,men,women}/{campaign}.csv and item_context.csv, what
# obp's OpenBanditDataset(data_path=...) reads -- plus prior_bts.yaml, the Beta prior of
# ZOZOTOWN's Bernoulli TS (obp/policy/conf/prior_bts.yaml). Idempotent: done once.
OBD := data/obd
obd: $(OBD)/.done
$(OBD)/.done: | $(STAMP)
	rm -rf $(OBD) data/.obd-sdist && mkdir -p $(OBD) data/.obd-sdist
	$(BIN)/python -m pip download --quiet obp==0.5.7 --no-deps --no-binary :all: --ignore-requires-python \
	  -d data/.obd-sdist
	tar -xzf data/.obd-sdist/obp-0.5.7.tar.gz -C $(OBD) --strip-components=4 obp-0.5.7/obp/dataset/obd
	tar -xzf data/.obd-sdist/obp-0.5.7.tar.gz -O obp-0.5.7/obp/policy/conf/prior_bts.yaml > $(OBD)/prior_bts.yaml
	rm -rf data/.obd-sdist
	$(BIN)/python bench/obd_items.py $(OBD)  # data/obd/items.csv: the items with ZOZOTOWN's BTS prior
	touch $@

# Reward models on the Open Bandit Dataset, obp's protocol (bench/obd_bench.py; docs/evaluation.md)
bench-obd: obd
	$(BIN)/python bench/run.py --only obd

# the decision service on the demo's shop directory (made by `make demo` when missing)
serve: $(STAMP)
	test -f out/demo/shop/CURRENT.json || $(BIN)/banditrec demo
	$(BIN)/banditrec serve --shop out/demo/shop

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis .mypy_cache
