# fkd: the two set-up commands are `make demo` and `make test` (see README.md).
BUILD ?= build
JOBS ?= 2
CMAKE_FLAGS ?=
# ccache must accept the precompiled torch header.
export CCACHE_SLOPPINESS = pch_defines,time_macros,include_file_mtime,include_file_ctime

.PHONY: all deps configure build test demo demo-quick bench clean format

all: build

deps:
	./scripts/install-deps

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
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD)
