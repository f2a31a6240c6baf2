# fkd: the two set-up commands are `make demo` and `make test` (see README.md).
# .ci/run adds format-check, test-sanitize and fuzz-smoke.
BUILD ?= build
SANITIZE_BUILD ?= build-sanitize
FUZZ_BUILD ?= build-fuzz
JOBS ?= 2
CMAKE_FLAGS ?=
CLANG_FORMAT ?= clang-format-14
FUZZ_CXX ?= clang++-14
FUZZ_SECONDS ?= 30
# ccache must accept the precompiled torch header; with paths taken relative to the
# checkout, clones in other directories share cached objects.
export CCACHE_SLOPPINESS = pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR ?= $(CURDIR)

.PHONY: all deps deps-ci configure build test demo demo-quick bench clean format \
	format-check test-sanitize fuzz-smoke

all: build

deps:
	./scripts/install-deps

deps-ci:
	./scripts/install-deps --ci

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && OMP_WAIT_POLICY=passive ctest --output-on-failure -j $(JOBS)

demo: build
	OMP_WAIT_POLICY=passive $(BUILD)/fkd demo --out demo-out

demo-quick: build
	OMP_WAIT_POLICY=passive $(BUILD)/fkd demo --quick --out demo-out

format:
	$(CLANG_FORMAT) -i $$(git ls-files '*.cpp' '*.h')

# Every tracked C++ file as clang-format 14 writes it (.clang-format); lists those that differ.
format-check: deps-ci
	@bad=$$(for f in $$(git ls-files '*.cpp' '*.h'); do \
	  $(CLANG_FORMAT) --dry-run --Werror "$$f" >/dev/null 2>&1 || echo "  $$f"; done); \
	if [ -n "$$bad" ]; then \
	  echo "format-check: these files differ from $(CLANG_FORMAT)'s output (make format):"; \
	  echo "$$bad"; exit 1; \
	fi; echo "format-check: every file is formatted"

# The torch-free library and tests (test_core_*) under AddressSanitizer and UBSan, in their
# own build directory; any sanitizer report fails the test. -O1 with line tables builds faster
# than -O2 -g and a report still names the line.
test-sanitize: deps
	cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DFKD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1"
	cmake --build $(SANITIZE_BUILD) -j $(JOBS)
	cd $(SANITIZE_BUILD) && UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# Each libFuzzer target for FUZZ_SECONDS on its seed corpus (fuzz/CMakeLists.txt). New inputs
# go to FUZZ_BUILD/smoke-*, a crashing one to FUZZ_BUILD/crash-*.
fuzz-smoke: deps-ci
	CXX=$(FUZZ_CXX) cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DFKD_FUZZ=ON -DFKD_TORCH=OFF -DFKD_BUILD_TESTS=OFF -DFKD_BUILD_BENCH=OFF
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_shard_reader fuzz_image_decode \
	  fuzz_reference_file
	@for f in shard_reader:corpus image_decode:corpus-image reference_file:corpus-reference; do \
	  name=$${f%%:*}; seeds=fuzz/$${f#*:}; work=$(FUZZ_BUILD)/smoke-$$name; \
	  rm -rf $$work && mkdir -p $$work; \
	  echo "fuzz-smoke: fuzz_$$name on $$seeds for $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/fuzz/fuzz_$$name -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_BUILD)/crash-$$name- $$work $$seeds > $$work.log 2>&1 \
	    || { tail -n 60 $$work.log; echo "fuzz-smoke: fuzz_$$name failed (log: $$work.log)"; exit 1; }; \
	  grep '^Done' $$work.log; \
	done

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD) $(FUZZ_BUILD)
