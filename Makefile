# lmpress — one Makefile. `make` builds build/lmpress and build/liblmpress.a;
# `make test` builds and runs the test runner (ends with "N passed, N failed").
CC      ?= cc
ARCH    ?= -march=native
OPT     ?= -O2
WARN     = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wvla -Wno-unused-parameter
CFLAGS  += -std=gnu11 $(OPT) -g $(ARCH) $(WARN) $(SAN) -fopenmp -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread
LDLIBS  += -lopenblas -llapacke -lz -lcjson -lpcre2-8 -lm -fopenmp $(SAN)
BUILD   ?= build
PREFIX  ?= /usr/local

LIB_SRC  = $(sort $(wildcard formats/*.c runtime/*.c quantize/*.c prune/*.c distill/*.c eval/*.c))
CLI_SRC  = $(sort $(wildcard cli/*.c))
TEST_SRC = $(sort $(wildcard tests/*.c))
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  = $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS     = $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

.PHONY: all test asan demo bench install clean deps fuzz cuda
all: $(BUILD)/lmpress $(BUILD)/liblmpress.a

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC $<"; $(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/liblmpress.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/lmpress: $(CLI_OBJ) $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/liblmpress.a $(LDLIBS)

$(BUILD)/lmpress-tests: $(TEST_OBJ) $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/liblmpress.a $(LDLIBS)

# The runner forks one process per test; LMP_BIN tells CLI tests which binary to run.
test: $(BUILD)/lmpress $(BUILD)/lmpress-tests
	LMP_BIN=$(BUILD)/lmpress $(BUILD)/lmpress-tests $(T)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

# Installs missing Debian packages when run as root, else prints the apt line.
deps:
	@sh scripts/deps.sh

demo: deps all
	@sh scripts/demo.sh $(BUILD)/lmpress

bench: all $(BUILD)/gptq_layer
	@BUILD=$(BUILD) sh bench/run.sh $(BUILD)/lmpress

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib
	install -m 755 $(BUILD)/lmpress $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/liblmpress.a $(DESTDIR)$(PREFIX)/lib/

# libFuzzer targets, one per loader (Debian clang). Run: make fuzz; see README.
FUZZ_TARGETS = $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
fuzz: $(FUZZ_TARGETS)
build-fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p build-fuzz
	clang -std=gnu11 -g -O1 -fopenmp -fsanitize=fuzzer,address,undefined -I. \
	  -I/usr/include/x86_64-linux-gnu/openblas-pthread -o $@ $< $(LIB_SRC) $(LDLIBS)

clean:
	rm -rf build build-asan build-fuzz

-include $(DEPS)

# GPTQ timing on one Llama-7B-shaped layer (bench/gptq_layer.c; options: see the file).
.PHONY: bench-gptq
bench-gptq: $(BUILD)/gptq_layer
	$(BUILD)/gptq_layer
$(BUILD)/gptq_layer: bench/gptq_layer.c $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/liblmpress.a $(LDLIBS)

# A GGUF of a Llama-2-7B-shaped model with random weights, for llama-bench beside
# bench/cuda_decode.c (bench/synth_gguf.c; docs/GPU.md "llama.cpp on the same GPU").
$(BUILD)/synth_gguf: bench/synth_gguf.c $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/liblmpress.a $(LDLIBS)

# ---- CUDA (`make cuda`, needs nvcc; CPU builds never use it) ---------------------------------
# runtime/cuda/*.cu -> $(BUILD)/cuda/liblmpress_cuda.a; the device tests
# $(BUILD)/cuda/lmpress-cuda-tests (tests/cuda/*.c, skip without a GPU); the benchmarks
# $(BUILD)/cuda/cuda_decode and cuda_gptq; $(BUILD)/cuda/lmpress, the CLI with --device cuda.
NVCC       ?= nvcc
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
CUDA_ARCH  ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVFLAGS    ?= -O3 -std=c++17 $(CUDA_ARCH) -I. -Werror all-warnings \
              -Xcompiler -Wall,-Wextra,-Wno-unused-parameter
CUDA_B      = $(BUILD)/cuda
CUDA_SRC    = $(sort $(wildcard runtime/cuda/*.cu))
CUDA_OBJ    = $(CUDA_SRC:%.cu=$(CUDA_B)/%.o)
CUDA_TSRC   = $(sort $(wildcard tests/cuda/*.c))
CUDA_TOBJ   = $(CUDA_TSRC:%.c=$(CUDA_B)/%.o)
CUDA_CLIOBJ = $(CLI_SRC:%.c=$(CUDA_B)/%.o)
CUDA_LIBS   = -L$(CUDA_HOME)/lib64 -lcublas -lcusolver -lcudart_static -ldl -lpthread -lrt -lstdc++
CUDA_CFLAGS = $(CFLAGS) -I$(CUDA_HOME)/include -DLMP_WITH_CUDA

cuda: $(CUDA_B)/liblmpress_cuda.a $(CUDA_B)/lmpress-cuda-tests $(CUDA_B)/cuda_decode \
      $(CUDA_B)/cuda_gptq $(CUDA_B)/lmpress $(BUILD)/synth_gguf

$(CUDA_B)/%.o: %.cu runtime/cuda/internal.h runtime/cuda/rt_cuda.h runtime/cuda/reduce.cuh runtime/cuda/attention.cuh runtime/cuda/q4dot.cuh runtime/cuda/q4t.cuh
	@mkdir -p $(dir $@)
	@echo "  NVCC $<"; $(NVCC) $(NVFLAGS) -c $< -o $@

# the default 4-bit tile decode kernels must not spill registers (scripts/cuda-spills.sh;
# docs/GPU.md, session 19): ptxas reports per kernel, kept beside the object
$(CUDA_B)/runtime/cuda/decode_q4t.o: runtime/cuda/decode_q4t.cu runtime/cuda/internal.h runtime/cuda/rt_cuda.h runtime/cuda/reduce.cuh runtime/cuda/attention.cuh runtime/cuda/q4dot.cuh runtime/cuda/q4t.cuh scripts/cuda-spills.sh
	@mkdir -p $(dir $@)
	@echo "  NVCC $< (and its spill check)"; \
	  $(NVCC) $(NVFLAGS) -Xptxas -v -c $< -o $@ 2> $(@:.o=.ptxas) || { cat $(@:.o=.ptxas); rm -f $@; exit 1; }; \
	  sh scripts/cuda-spills.sh $(@:.o=.ptxas) || { rm -f $@; exit 1; }

$(CUDA_B)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC $< (cuda)"; $(CC) $(CUDA_CFLAGS) -MMD -MP -c $< -o $@

$(CUDA_B)/liblmpress_cuda.a: $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

CUDA_LINK = $(CUDA_B)/liblmpress_cuda.a $(BUILD)/liblmpress.a $(LDLIBS) $(CUDA_LIBS)

$(CUDA_B)/lmpress-cuda-tests: $(CUDA_TOBJ) $(BUILD)/tests/main.o $(CUDA_B)/liblmpress_cuda.a $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $(CUDA_TOBJ) $(BUILD)/tests/main.o $(CUDA_LINK)

$(CUDA_B)/cuda_decode: $(CUDA_B)/bench/cuda_decode.o $(CUDA_B)/liblmpress_cuda.a $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LINK)

$(CUDA_B)/cuda_gptq: $(CUDA_B)/bench/cuda_gptq.o $(CUDA_B)/liblmpress_cuda.a $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LINK)

$(CUDA_B)/lmpress: $(CUDA_CLIOBJ) $(CUDA_B)/liblmpress_cuda.a $(BUILD)/liblmpress.a
	$(CC) $(CFLAGS) -o $@ $(CUDA_CLIOBJ) $(CUDA_LINK)

-include $(CUDA_TOBJ:.o=.d) $(CUDA_CLIOBJ:.o=.d)
