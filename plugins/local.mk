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

plugins_lathe_zero_la_SOURCES = plugins/zero/zero.c
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
