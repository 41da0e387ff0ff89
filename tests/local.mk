# Check suites (one per module, "Core" and "Limits" cases) and end-to-end
# scripts. Tests that need a GPU or MPI exit 77 (skip) where there is none.
TEST_LDADD = core/liblathe.la $(CHECK_LIBS) -lm
TEST_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS)
AM_TESTS_ENVIRONMENT = \
	LATHE_PLUGIN_PATH='$(abs_top_builddir)/plugins/.libs'; export LATHE_PLUGIN_PATH; \
	LATHE_TEST_PLUGINS='$(abs_top_builddir)/tests/.libs'; export LATHE_TEST_PLUGINS; \
	LATHE_BIN='$(abs_top_builddir)/lathe'; export LATHE_BIN; \
	top_srcdir='$(abs_top_srcdir)'; export top_srcdir; \
	top_builddir='$(abs_top_builddir)'; export top_builddir; \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2}; export OMP_NUM_THREADS; \
	OMP_WAIT_POLICY=PASSIVE; export OMP_WAIT_POLICY;

check_PROGRAMS += tests/check_tensor tests/check_ops_linalg tests/check_ops_nn \
	tests/check_config tests/check_loader tests/check_io tests/check_components \
	tests/check_models tests/check_tokenizer tests/check_gguf tests/check_chat tests/check_generate tests/check_lora tests/check_ops_fn
TESTS += tests/check_tensor tests/check_ops_linalg tests/check_ops_nn \
	tests/check_config tests/check_loader tests/check_io tests/check_components \
	tests/check_models tests/check_tokenizer tests/check_gguf tests/check_chat tests/check_generate tests/check_lora tests/check_ops_fn

tests_check_tensor_SOURCES = tests/check_tensor.c tests/testutil.h
tests_check_tensor_CFLAGS = $(TEST_CFLAGS)
tests_check_tensor_LDADD = $(TEST_LDADD)
tests_check_ops_linalg_SOURCES = tests/check_ops_linalg.c tests/gradcheck.c tests/gradcheck.h tests/testutil.h
tests_check_ops_linalg_CFLAGS = $(TEST_CFLAGS)
tests_check_ops_linalg_LDADD = $(TEST_LDADD)
tests_check_ops_fn_SOURCES = tests/check_ops_fn.c tests/gradcheck.c tests/gradcheck.h tests/testutil.h
tests_check_ops_fn_CFLAGS = $(TEST_CFLAGS)
tests_check_ops_fn_LDADD = $(TEST_LDADD)
tests_check_ops_nn_SOURCES = tests/check_ops_nn.c tests/gradcheck.c tests/gradcheck.h tests/testutil.h
tests_check_ops_nn_CFLAGS = $(TEST_CFLAGS)
tests_check_ops_nn_LDADD = $(TEST_LDADD)
tests_check_config_SOURCES = tests/check_config.c tests/testutil.h
tests_check_config_CFLAGS = $(TEST_CFLAGS)
tests_check_config_LDADD = $(TEST_LDADD)
tests_check_loader_SOURCES = tests/check_loader.c tests/testutil.h
tests_check_loader_CFLAGS = $(TEST_CFLAGS)
tests_check_loader_LDADD = $(TEST_LDADD)
tests_check_io_SOURCES = tests/check_io.c tests/testutil.h
tests_check_io_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_io_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_components_SOURCES = tests/check_components.c tests/testutil.h
tests_check_components_CFLAGS = $(TEST_CFLAGS)
tests_check_components_LDADD = $(TEST_LDADD)

tests_check_models_SOURCES = tests/check_models.c tests/testutil.h
tests_check_models_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_models_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_tokenizer_SOURCES = tests/check_tokenizer.c tests/testutil.h
tests_check_tokenizer_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_tokenizer_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_gguf_SOURCES = tests/check_gguf.c tests/testutil.h
tests_check_gguf_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_gguf_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_chat_SOURCES = tests/check_chat.c tests/testutil.h
tests_check_chat_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_chat_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_generate_SOURCES = tests/check_generate.c tests/testutil.h
tests_check_generate_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_generate_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
tests_check_lora_SOURCES = tests/check_lora.c tests/testutil.h
tests_check_lora_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_lora_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
# Deliberately broken plugins for the loader's refusals (-rpath makes libtool
# build shared modules for check_LTLIBRARIES).
BROKEN_LDFLAGS = -module -avoid-version -shared -rpath /nowhere
check_LTLIBRARIES += tests/lathe-good.la tests/lathe-abi-major.la tests/lathe-abi-minor.la \
	tests/lathe-size-zero.la tests/lathe-no-symbol.la tests/lathe-bad-sig.la tests/lathe-dup.la \
	tests/lathe-ops-small.la
tests_lathe_good_la_SOURCES = tests/plugins/good.c
tests_lathe_good_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_abi_major_la_SOURCES = tests/plugins/abi_major.c
tests_lathe_abi_major_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_abi_minor_la_SOURCES = tests/plugins/abi_minor.c
tests_lathe_abi_minor_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_size_zero_la_SOURCES = tests/plugins/size_zero.c
tests_lathe_size_zero_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_no_symbol_la_SOURCES = tests/plugins/no_symbol.c
tests_lathe_no_symbol_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_bad_sig_la_SOURCES = tests/plugins/bad_sig.c
tests_lathe_bad_sig_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_dup_la_SOURCES = tests/plugins/dup.c
tests_lathe_dup_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_ops_small_la_SOURCES = tests/plugins/ops_small.c
tests_lathe_ops_small_la_LDFLAGS = $(BROKEN_LDFLAGS)

# End-to-end runs of real INI files and the installed SDK.
TESTS += tests/e2e_headers.sh tests/e2e_cli.sh tests/e2e_pretrain.sh tests/e2e_resume.sh tests/e2e_sdk.sh tests/e2e_rl.sh
EXTRA_DIST += tests/e2e_headers.sh tests/e2e_cli.sh tests/e2e_pretrain.sh tests/e2e_resume.sh tests/e2e_rl.sh \
	tests/e2e_sdk.sh tests/tb_check.py tests/e2e_lib.sh \
	$(TEST_FIXTURES)

# Reference fixtures made once with the real libraries (scripts beside them);
# CI only reads them.
TEST_FIXTURES =
include tests/fixtures/local.mk

# Reward plugins and `lathe reward`.
check_PROGRAMS += tests/check_rewards
TESTS += tests/check_rewards tests/e2e_reward.sh
EXTRA_DIST += tests/e2e_reward.sh
tests_check_rewards_SOURCES = tests/check_rewards.c tests/testutil.h
tests_check_rewards_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_rewards_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)

check_PROGRAMS += tests/check_plan
TESTS += tests/check_plan
tests_check_plan_SOURCES = tests/check_plan.c tests/testutil.h
tests_check_plan_CFLAGS = $(TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_check_plan_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)

# Several processes under mpirun (skips without MPI).
TESTS += tests/e2e_mpi.sh
EXTRA_DIST += tests/e2e_mpi.sh
# The mpi communicator's collectives (skips without the plugin; e2e_mpi.sh
# runs it again under mpirun -np 3).
check_PROGRAMS += tests/check_comm
TESTS += tests/check_comm
tests_check_comm_SOURCES = tests/check_comm.c tests/testutil.h
tests_check_comm_CFLAGS = $(TEST_CFLAGS)
tests_check_comm_LDADD = $(TEST_LDADD)

# The CUDA backend against the CPU backend, and a short training run on
# each (skips without the plugin or a GPU; never links CUDA itself).
check_PROGRAMS += tests/check_cuda
TESTS += tests/check_cuda
tests_check_cuda_SOURCES = tests/check_cuda.c tests/testutil.h
tests_check_cuda_CFLAGS = $(TEST_CFLAGS)
tests_check_cuda_LDADD = $(TEST_LDADD) -ldl

# The nccl communicator on device buffers (skips without the plugin or a GPU;
# re-runs itself under mpirun -np 2 where two GPUs are visible; never links
# CUDA itself).
check_PROGRAMS += tests/check_nccl
TESTS += tests/check_nccl
tests_check_nccl_SOURCES = tests/check_nccl.c tests/testutil.h
tests_check_nccl_CFLAGS = $(TEST_CFLAGS) -DLATHE_MPIRUN='"$(MPIRUN)"'
tests_check_nccl_LDADD = $(TEST_LDADD) -ldl

# A pretend device (tests/plugins/fakedev.c): the CPU's arithmetic behind
# tagged pointers that crash when host code touches them, so that every
# host read or write of device memory must go through the backend. Used by
# tests/e2e_fakedev.sh with [run] backend = fakedev; never installed.
check_LTLIBRARIES += tests/lathe-fakedev.la
tests_lathe_fakedev_la_SOURCES = tests/plugins/fakedev.c
tests_lathe_fakedev_la_CFLAGS = $(AM_CFLAGS) -fvisibility=hidden
tests_lathe_fakedev_la_LDFLAGS = $(BROKEN_LDFLAGS)
tests_lathe_fakedev_la_LIBADD = core/liblathe.la
TESTS += tests/e2e_fakedev.sh
EXTRA_DIST += tests/e2e_fakedev.sh

check_PROGRAMS += tests/check_segment
TESTS += tests/check_segment
tests_check_segment_SOURCES = tests/check_segment.c tests/testutil.h
tests_check_segment_CFLAGS = $(TEST_CFLAGS)
tests_check_segment_LDADD = $(TEST_LDADD)
TESTS += tests/e2e_recompute.sh
EXTRA_DIST += tests/e2e_recompute.sh

# Mixed precision: round_to and gemm_lowp on the CPU, the ops under a
# 16-bit compute dtype, the fp16 loss scaler and [run] precision.
check_PROGRAMS += tests/check_precision
TESTS += tests/check_precision
tests_check_precision_SOURCES = tests/check_precision.c tests/gradcheck.c tests/gradcheck.h tests/testutil.h
tests_check_precision_CFLAGS = $(TEST_CFLAGS)
tests_check_precision_LDADD = $(TEST_LDADD)
TESTS += tests/e2e_precision.sh
EXTRA_DIST += tests/e2e_precision.sh
