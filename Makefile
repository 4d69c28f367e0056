# Developer shortcuts. `make bench` compares Aegis with agent-aegis 1.0.0;
# pass options through ARGS, e.g. `make bench ARGS="--quick"`.

PYTHON ?= python3

.PHONY: bench
bench:
	$(PYTHON) benchmarks/run.py $(ARGS)
