# Phoenix: the two commands of README.md are `make run` and `make test`.
# Both install missing Debian packages, configure and build (idempotent), then run.
BUILD ?= build
JOBS ?= 2
CMAKE_FLAGS ?=
PHX := $(BUILD)/bin/phoenix
RUN_DIR ?= phoenix-run

.PHONY: all deps build run test test-unit bench bench-torch bench-runtime accuracy clean

all: build

deps:
	@apps/scripts/install_deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# The main job: single-process training of the papers' CNN on Fashion-MNIST (3 epochs).
run: build
	mkdir -p $(RUN_DIR)
	$(PHX) train --metrics $(RUN_DIR)/metrics.csv --summary $(RUN_DIR)/summary.json

# The whole test suite (unit, cli; gpu tests skip without a device).
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 900

# Kernel throughput table (docs/perf.md).
bench: build
	$(PHX) bench kernels

# Phoenix and PyTorch side by side on the same models, batches and threads.
bench-torch: build
	apps/scripts/install_deps.sh --torch
	/usr/bin/python3 apps/scripts/bench_vs_torch.py --phoenix $(PHX)

# Parameter-server runtime figures (push+pull vs allreduce, job throughput, CPU per rank).
bench-runtime: build
	apps/scripts/bench_runtime.sh $(PHX)

# The accuracy figures of docs/perf.md (paper settings and Phoenix defaults).
accuracy: build
	apps/scripts/accuracy.sh $(PHX)

clean:
	rm -rf $(BUILD)
