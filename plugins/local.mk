# In-tree plugins: each plugins/NAME/ builds plugins/lathe-NAME.so.
PLUGIN_LDFLAGS = -module -avoid-version -shared -export-symbols-regex '^lathe_plugin_describe$$'
PLUGIN_LIBADD = core/liblathe.la
# Only lathe_plugin_describe is visible outside a plugin.
PLUGIN_CFLAGS = $(AM_CFLAGS) -fvisibility=hidden

plugin_LTLIBRARIES += plugins/lathe-adamw.la plugins/lathe-sgd.la plugins/lathe-schedules.la \
	plugins/lathe-cross-entropy.la plugins/lathe-mse.la plugins/lathe-gpt2.la plugins/lathe-text.la \
	plugins/lathe-llama.la plugins/lathe-jsonl-chat.la plugins/lathe-lora.la

plugins_lathe_adamw_la_SOURCES = plugins/adamw/adamw.c
plugins_lathe_adamw_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_adamw_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_adamw_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_sgd_la_SOURCES = plugins/sgd/sgd.c
plugins_lathe_sgd_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_sgd_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_sgd_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_schedules_la_SOURCES = plugins/schedules/schedules.c
plugins_lathe_schedules_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_schedules_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_schedules_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_cross_entropy_la_SOURCES = plugins/cross-entropy/cross_entropy.c
plugins_lathe_cross_entropy_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_cross_entropy_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_cross_entropy_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_mse_la_SOURCES = plugins/mse/mse.c
plugins_lathe_mse_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_mse_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_mse_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_gpt2_la_SOURCES = plugins/gpt2/gpt2.c
plugins_lathe_gpt2_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_gpt2_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_gpt2_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

plugins_lathe_text_la_SOURCES = plugins/text/text.c
plugins_lathe_text_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_text_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_text_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_llama_la_SOURCES = plugins/llama/llama.c
plugins_lathe_llama_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_llama_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_llama_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

plugins_lathe_jsonl_chat_la_SOURCES = plugins/jsonl-chat/jsonl_chat.c
plugins_lathe_jsonl_chat_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_jsonl_chat_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_jsonl_chat_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

plugins_lathe_lora_la_SOURCES = plugins/lora/lora.c
plugins_lathe_lora_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_lora_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_lora_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

plugin_LTLIBRARIES += plugins/lathe-rewards.la
plugins_lathe_rewards_la_SOURCES = plugins/rewards/rewards.c
plugins_lathe_rewards_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_rewards_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_rewards_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS) -lm

# Parallel strategies (need only a communicator, whichever it is).
plugin_LTLIBRARIES += plugins/lathe-ddp.la plugins/lathe-zero.la
plugins_lathe_ddp_la_SOURCES = plugins/ddp/ddp.c
plugins_lathe_ddp_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_ddp_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_ddp_la_LIBADD = $(PLUGIN_LIBADD)

plugins_lathe_zero_la_SOURCES = plugins/zero/zero.c plugins/zero/checkpoint.c plugins/zero/zero.h
plugins_lathe_zero_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_zero_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_zero_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

# The MPI communicator, where configure found Open MPI (or another MPI).
if HAVE_MPI
plugin_LTLIBRARIES += plugins/lathe-mpi.la
plugins_lathe_mpi_la_SOURCES = plugins/mpi/mpi.c
plugins_lathe_mpi_la_CFLAGS = $(PLUGIN_CFLAGS) $(MPI_CFLAGS)
plugins_lathe_mpi_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_mpi_la_LIBADD = $(PLUGIN_LIBADD) $(MPI_LIBS)
endif

plugin_LTLIBRARIES += plugins/lathe-grpo.la
plugins_lathe_grpo_la_SOURCES = plugins/grpo/grpo.c
plugins_lathe_grpo_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_grpo_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_grpo_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

plugin_LTLIBRARIES += plugins/lathe-dpo.la
plugins_lathe_dpo_la_SOURCES = plugins/dpo/dpo.c
plugins_lathe_dpo_la_CFLAGS = $(PLUGIN_CFLAGS) $(JANSSON_CFLAGS)
plugins_lathe_dpo_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_dpo_la_LIBADD = $(PLUGIN_LIBADD) $(JANSSON_LIBS)

# The CUDA backend (plugins/cuda), where configure found the toolkit. nvcc
# compiles each .cu file to a PIC object and the suffix rule writes the
# libtool object (.lo) naming it, so libtool links them like its own.
CUDA_SOURCES = plugins/cuda/memory.cu plugins/cuda/gemm.cu plugins/cuda/elementwise.cu plugins/cuda/index.cu \
	plugins/cuda/norm.cu plugins/cuda/softmax.cu plugins/cuda/attention.cu plugins/cuda/optim.cu
EXTRA_DIST += $(CUDA_SOURCES) plugins/cuda/common.h bench/gpu-check.sh
CLEANFILES += plugins/cuda/*.lo plugins/cuda/*.o
SUFFIXES = .cu
# sm_80 (A100) and sm_90 (H100/H200) machine code, and sm_90 PTX for newer GPUs
NVCC_GENCODE = -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	-gencode arch=compute_90,code=compute_90
NVCCFLAGS = -std=c++17 -O3 $(NVCC_GENCODE) -Xcompiler -fPIC,-fvisibility=hidden -DLATHE_BUILD_CUDA \
	-I$(top_srcdir)/sdk/include -I$(top_builddir)
.cu.lo:
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	$(CUDA_DIR)/bin/nvcc $(NVCCFLAGS) -c $< -o $*.o && \
	{ echo "# $(@F) - a libtool object file"; \
	  echo "# Generated by libtool's .lo format, written by plugins/local.mk for nvcc"; \
	  echo "pic_object='$(*F).o'"; \
	  echo "non_pic_object=none"; } > $@
if HAVE_CUDA
plugin_LTLIBRARIES += plugins/lathe-cuda.la
plugins_lathe_cuda_la_SOURCES = plugins/cuda/plugin.c plugins/cuda/kernels.h
plugins_lathe_cuda_la_CFLAGS = $(PLUGIN_CFLAGS) -DLATHE_BUILD_CUDA
# nodelete: the CUDA runtime must not be unmapped while its context lives
plugins_lathe_cuda_la_LDFLAGS = $(PLUGIN_LDFLAGS) -R$(CUDA_DIR)/lib64 -Wl,-z,nodelete
plugins_lathe_cuda_la_LIBADD = $(CUDA_SOURCES:.cu=.lo) $(PLUGIN_LIBADD) -L$(CUDA_DIR)/lib64 -lcublas -lcudart -lstdc++
$(CUDA_SOURCES:.cu=.lo): plugins/cuda/common.h plugins/cuda/kernels.h
endif

# The NCCL communicator (plugins/nccl), where configure found CUDA, NCCL and
# MPI (NCCL's unique id travels over MPI). Plain C: it calls the CUDA runtime
# and NCCL but has no kernels, and it is built without LATHE_BUILD_CUDA (its
# ops take opaque pointers and ask nothing of the host's build; see the
# file comment).
EXTRA_DIST += plugins/nccl/nccl.c
if HAVE_NCCL
if HAVE_MPI
plugin_LTLIBRARIES += plugins/lathe-nccl.la
plugins_lathe_nccl_la_SOURCES = plugins/nccl/nccl.c
plugins_lathe_nccl_la_CFLAGS = $(PLUGIN_CFLAGS) $(MPI_CFLAGS) -I$(CUDA_DIR)/include
# nodelete: the CUDA runtime must not be unmapped while its context lives
plugins_lathe_nccl_la_LDFLAGS = $(PLUGIN_LDFLAGS) -R$(CUDA_DIR)/lib64 -Wl,-z,nodelete
plugins_lathe_nccl_la_LIBADD = $(PLUGIN_LIBADD) $(MPI_LIBS) -L$(CUDA_DIR)/lib64 -lnccl -lcudart
endif
endif
