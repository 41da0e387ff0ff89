# liblathe and the lathe command.
lib_LTLIBRARIES += core/liblathe.la
core_liblathe_la_SOURCES = \
	core/util/status.c core/util/rng.c core/util/strutil.c core/util/strutil.h \
	core/tensor/tensor.c core/tensor/dtype.c core/tensor/autograd.c core/tensor/autograd.h core/tensor/segment.c core/tensor/tensor_internal.h \
	core/tensor/state.c core/tensor/state.h \
	core/ops/linear.c core/ops/embedding.c core/ops/elementwise.c core/ops/reduce.c \
	core/ops/norm.c core/ops/activation.c core/ops/rope.c core/ops/attention.c \
	core/ops/softmax.c core/ops/cross_entropy.c core/ops/dropout.c core/ops/shape.c \
	core/ops/index.c \
	core/cpu/backend.c core/cpu/cpu.h core/cpu/vmath.h core/cpu/gemm.c core/cpu/elementwise.c core/cpu/norm.c \
	core/cpu/activation.c core/cpu/rope.c core/cpu/attention.c core/cpu/attention_flash.c core/cpu/softmax.c \
	core/cpu/copy.c core/cpu/index.c core/cpu/optim.c core/cpu/attention_cached.c core/cpu/unary.c core/cpu/lowp.c \
	core/config/config.c core/config/getters.c core/config/config_internal.h \
	core/plugin/loader.c core/plugin/loader.h \
	core/io/crc32c.c core/io/tensorboard.c core/io/tensorboard.h \
	core/io/safetensors.c core/io/safetensors.h core/io/metrics.c core/io/metrics.h \
	core/train/run.c core/train/run.h core/train/run_internal.h core/train/scaler.h core/train/loop.c core/train/checkpoint.c \
	core/train/checkpoint.h core/train/progress.c core/train/rewards.c core/train/rewards.h core/train/report.c core/train/report.h core/train/policy.c \
	core/text/tokenizer.c core/text/bpe.c core/text/pretok.c core/text/tokenizer_internal.h \
	core/text/chat.c \
	core/io/weights.c core/io/gguf.c core/io/gguf.h core/io/dequant.c \
	core/gen/generate.c core/gen/generate.h core/gen/kvcache.c core/ops/attention_cached.c core/ops/unary.c
core_liblathe_la_CFLAGS = $(AM_CFLAGS) $(INIH_CFLAGS) $(JANSSON_CFLAGS) $(PCRE2_CFLAGS)
core_liblathe_la_LIBADD = $(INIH_LIBS) $(JANSSON_LIBS) $(PCRE2_LIBS) $(UNISTRING_LIBS) $(BLAS_LIBS) $(OPENMP_CFLAGS) -lm
core_liblathe_la_LDFLAGS = -version-info 0:0:0 -export-symbols-regex '^lathe_'

bin_PROGRAMS += lathe
lathe_SOURCES = core/cli/main.c core/cli/cli.h core/cli/cmd_train.c core/cli/cmd_plugins.c \
	core/cli/cmd_config.c core/cli/cmd_tokenize.c core/cli/cmd_convert.c core/cli/cmd_data.c \
	core/cli/cmd_generate.c core/cli/cmd_merge.c core/cli/cmd_reward.c
lathe_CFLAGS = $(AM_CFLAGS)
lathe_LDADD = core/liblathe.la $(JANSSON_LIBS)

lathe_includedir = $(includedir)/lathe
lathe_include_HEADERS = \
	sdk/include/lathe/lathe.h sdk/include/lathe/abi.h sdk/include/lathe/status.h \
	sdk/include/lathe/rng.h sdk/include/lathe/tensor.h sdk/include/lathe/ops.h \
	sdk/include/lathe/backend.h sdk/include/lathe/config.h sdk/include/lathe/env.h \
	sdk/include/lathe/plugin.h sdk/include/lathe/model.h sdk/include/lathe/data.h \
	sdk/include/lathe/loss.h sdk/include/lathe/optim.h sdk/include/lathe/parallel.h \
	sdk/include/lathe/peft.h sdk/include/lathe/reward.h sdk/include/lathe/logger.h \
	sdk/include/lathe/tokenizer.h sdk/include/lathe/chat.h sdk/include/lathe/weights.h \
	sdk/include/lathe/generate.h sdk/include/lathe/policy.h \
	sdk/include/lathe/segment.h
core_liblathe_la_SOURCES += core/plan/plan.c core/plan/plan.h
lathe_SOURCES += core/cli/cmd_plan.c
