# The CUDA build without a GPU or a CUDA toolkit (issue 31). NVIDIA's pip wheels bring nvcc, the
# headers and the libraries into a virtual environment under target/cuda; candle's kernels and
# every tool compile against them with `--features cuda`.
#   make cuda-check   `cargo check --features cuda` of every target: nvcc compiles candle's
#                     kernels for CUDA_COMPUTE_CAP and rustc checks the tools against cudarc;
#                     nothing is linked (needs nvcc, cccl and the runtime headers: ~370 MB)
#   make cuda-build   release tools with `--features cuda` in target/cuda/release, linked
#                     against the wheels' libraries (~1.3 GB) and a stub of the driver's
#                     libcuda.so.1 (which comes with a GPU's driver and is loaded at run time).
#                     To run them: LD_LIBRARY_PATH=$(make -s cuda-libs) target/cuda/release/...
#                     --device cuda, or build on the GPU machine with its own toolkit.
# Compile-checked only: no GPU has run these tools yet (README, "On a GPU").
CUDA_DIR := target/cuda
CUDA_VENV := $(CUDA_DIR)/venv
# sm_90 (H100, H200); cudarc 0.19 knows CUDA versions up to 13.4, which the 13.5 wheels serve.
CUDA_COMPUTE_CAP ?= 90
CUDARC_CUDA_VERSION ?= 13040
CUDA_WHEELS := nvidia-cuda-nvcc==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-runtime==13.5.37
CUDA_LINK_WHEELS := nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25 nvidia-cuda-nvrtc==13.5.37
# The wheels' root (bin/, include/, lib/), asked of the environment's Python.
CUDA_ROOT_OF = $$($(CUDA_VENV)/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
CUDA_CARGO = nv=$(CUDA_ROOT_OF); PATH=$$nv/bin:$$PATH CUDA_ROOT=$$nv CUDA_PATH=$$nv \
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CUDARC_CUDA_VERSION=$(CUDARC_CUDA_VERSION) RUSTFLAGS= \
	CARGO_TARGET_DIR=$(CUDA_DIR) $(CARGO)

.PHONY: cuda-check cuda-build cuda-libs
cuda-check: $(CUDA_VENV)/.compile
	$(CUDA_CARGO) check --locked --features cuda --all-targets

cuda-build: $(CUDA_VENV)/.link
	$(CUDA_CARGO) build --release --locked --features cuda --lib
	@# The driver's stub: every cu* function cudarc calls, as an empty one in libcuda.so.1.
	nv=$(CUDA_ROOT_OF); nm -u $(CUDA_DIR)/release/deps/libcudarc-*.rlib 2>/dev/null \
		| awk '{print $$2}' | grep -E '^cu[A-Z]' | sort -u | sed 's/.*/void &(void) {}/' \
		> $(CUDA_DIR)/libcuda-stub.c; \
	cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o $$nv/lib/libcuda.so $(CUDA_DIR)/libcuda-stub.c
	$(CUDA_CARGO) build --release --locked --features cuda --bins
	@echo "cuda-build: the tools are in $(CUDA_DIR)/release (compiled for sm_$(CUDA_COMPUTE_CAP))"

# The directory of the CUDA libraries the tools load (for LD_LIBRARY_PATH).
cuda-libs: $(CUDA_VENV)/.link
	@echo "$(CUDA_ROOT_OF)/lib"

$(CUDA_VENV)/.compile:
	python3 -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install --quiet --disable-pip-version-check $(CUDA_WHEELS)
	@touch $@

# The libraries, with the unversioned names the linker looks for.
$(CUDA_VENV)/.link: $(CUDA_VENV)/.compile
	$(CUDA_VENV)/bin/pip install --quiet --disable-pip-version-check $(CUDA_LINK_WHEELS)
	cd $(CUDA_ROOT_OF)/lib && for l in cublas cublasLt cudart curand nvrtc; do \
		ln -sf $$(ls lib$$l.so.* | head -1) lib$$l.so; done
	@touch $@
