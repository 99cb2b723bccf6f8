# llm-morph — top-level build.
#
# `make` builds the CPU backend, the host library and every program into build/;
# the CUDA backend is added when nvcc is found (CUDA=0 / CUDA=1 force it).
# `make check` builds and runs every test and ends with `N passed, N failed`.
# `make demo` runs the main job on an embedded default (no downloads).
# Nothing here downloads anything; `tools/install-deps.sh` installs Debian packages.

SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:
.SECONDARY:

BUILD   ?= build
PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc
NVCC    ?= nvcc
VERSION := 0.1.0

ifeq ($(origin CUDA),undefined)
CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
ifeq ($(CUDA_HOME),)
CUDA_HOME := /usr/local/cuda
endif

PKG_CONFIG ?= pkg-config
PKGS := libzstd libcjson openblas
# Only ask pkg-config when it can answer; tools/check-deps.sh explains what is missing.
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
# No FMA contraction across expressions: the reference and bit-exact metric modes need it.
FPFLAGS := -ffp-contract=off
ifeq ($(CI),true)
WARN += -Werror
NVWERR := -Werror all-warnings -Xcompiler -Werror
endif
CSTD     := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
CFLAGS   ?= -O2 -g
ALL_CFLAGS = $(CSTD) $(CFLAGS) $(WARN) $(FPFLAGS) -fopenmp -MMD -MP -Ilibcommon -Ikernels -Itests/lib \
             -I/usr/include/nifti $(PKG_CFLAGS) -DLM_VERSION='"$(VERSION)"' -DLM_HAVE_CUDA=$(CUDA)
LDLIBS_ALL = $(PKG_LIBS) -lnifti2 -lznz -lz -lm -fopenmp
NVFLAGS  := -O3 -std=c++17 -lineinfo -gencode arch=compute_80,code=sm_80 \
            -gencode arch=compute_90,code=sm_90 -Ilibcommon -Ikernels -MMD -MP \
            -Xcompiler -Wall,-Wextra $(NVWERR)
ifeq ($(CUDA),1)
LDLIBS_ALL += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublasLt -lcublas -lcudart -lstdc++
endif

# ---- sources -------------------------------------------------------------------------------
COMMON_SRC := $(sort $(wildcard libcommon/*/*.c))
KCPU_SRC   := $(sort $(wildcard kernels/common/*.c kernels/cpu/*.c kernels/*.c))
KCUDA_SRC  := $(sort $(wildcard kernels/cuda/*.cu))
TOOLS_SRC  := $(sort $(wildcard tools/lm-*.c))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c tests/kernels/test_*.c))
BENCH_SRC  := $(sort $(wildcard tests/bench/bench_*.c))
TEST_HELPERS := $(sort $(wildcard tests/lib/*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
COMMON_OBJ := $(call obj,$(COMMON_SRC))
KCPU_OBJ   := $(call obj,$(KCPU_SRC))
KCUDA_OBJ  := $(patsubst %.cu,$(BUILD)/obj/%.o,$(KCUDA_SRC))
THELP_OBJ  := $(call obj,$(TEST_HELPERS))

LIBCOMMON := $(BUILD)/lib/liblmcommon.a
LIBKERN   := $(BUILD)/lib/liblmkernels.a
KERN_OBJS := $(KCPU_OBJ) $(if $(filter 1,$(CUDA)),$(KCUDA_OBJ))
PROGS     := $(patsubst tools/%.c,$(BUILD)/bin/%,$(TOOLS_SRC))
TESTS     := $(patsubst %.c,$(BUILD)/%,$(UNIT_SRC))
BENCHES   := $(patsubst %.c,$(BUILD)/%,$(BENCH_SRC))
MANPAGES  := $(sort $(wildcard man/*.[157]))
DEPS_OK   := $(BUILD)/.deps-ok

.PHONY: all check check-cuda check-asan demo bench install uninstall clean format deps help
all: $(PROGS)

help:
	@echo "targets: all (default), check, check-cuda, check-asan, demo, bench, install, clean, format, deps"
	@echo "vars: CUDA=0|1 (now $(CUDA)), CI=true (-Werror), BUILD=$(BUILD), PREFIX=$(PREFIX), DESTDIR"

$(DEPS_OK): tools/check-deps.sh
	@mkdir -p $(@D)
	@tools/check-deps.sh $(CUDA)
	@touch $@

deps:
	tools/install-deps.sh

$(BUILD)/obj/%.o: %.c | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cu | $(DEPS_OK)
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIBCOMMON): $(COMMON_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(LIBKERN): $(KERN_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# The two libraries call each other (errors, device discovery): link them as a group.
LINK_LIBS = -Wl,--start-group $(LIBCOMMON) $(LIBKERN) -Wl,--end-group
LINK_DEPS = $(LIBCOMMON) $(LIBKERN)

$(BUILD)/bin/%: $(BUILD)/obj/tools/%.o $(LINK_DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LINK_LIBS) $(LDLIBS_ALL)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(THELP_OBJ) $(LINK_DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(THELP_OBJ) $(LINK_LIBS) $(LDLIBS_ALL)

# ---- tests ---------------------------------------------------------------------------------
check: $(PROGS) $(TESTS)
	@LM_CUDA=$(CUDA) tests/run-tests.sh $(BUILD)

check-cuda: $(PROGS) $(TESTS)
	@LM_CUDA=$(CUDA) LM_REQUIRE_CUDA=1 tests/run-tests.sh $(BUILD)

# The kernel tests again, built with AddressSanitizer into $(BUILD)-asan (CPU backend only): reads
# and writes past a buffer that the plain tests cannot see (an undersized scratch block whose
# neighbour is writable). There every buffer comes from the heap at its exact size
# (kernels/cpu/backend.c), large ones included; allocator_may_return_null: an allocation too
# large fails as without ASan (the tests ask for SIZE_MAX). CI runs it before `make check`.
ASAN_BUILD := $(BUILD)-asan
ASAN_TESTS := $(patsubst tests/kernels/%.c,$(ASAN_BUILD)/tests/kernels/%,$(wildcard tests/kernels/test_*.c))
check-asan:
	@$(MAKE) --no-print-directory CUDA=0 BUILD=$(ASAN_BUILD) \
	    CFLAGS="-O1 -g -fsanitize=address -fno-omit-frame-pointer" $(ASAN_TESTS)
	@ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 LM_PROGRAMS_ONLY=1 \
	    tests/run-tests.sh $(ASAN_BUILD)

bench: $(PROGS) $(BENCHES)
	@tests/bench/run-bench.sh $(BUILD)

demo: $(PROGS)
	@$(MAKE) --no-print-directory -f pipelines/demo.mk BUILD=$(BUILD)

# ---- install -------------------------------------------------------------------------------
install: $(PROGS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 0755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/
	for m in $(MANPAGES); do \
	    install -m 0644 $$m $(DESTDIR)$(PREFIX)/share/man/man$${m##*.}/; done

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(notdir $(PROGS)))
	for m in $(MANPAGES); do rm -f $(DESTDIR)$(PREFIX)/share/man/man$${m##*.}/$${m##*/}; done

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
