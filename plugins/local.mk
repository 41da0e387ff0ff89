# In-tree plugins: each plugins/NAME/ builds plugins/lathe-NAME.so.
PLUGIN_LDFLAGS = -module -avoid-version -shared -export-symbols-regex '^lathe_plugin_describe$$'
PLUGIN_LIBADD = core/liblathe.la
# Only lathe_plugin_describe is visible outside a plugin.
PLUGIN_CFLAGS = $(AM_CFLAGS) -fvisibility=hidden

plugin_LTLIBRARIES += plugins/lathe-adamw.la plugins/lathe-sgd.la plugins/lathe-schedules.la \
	plugins/lathe-cross-entropy.la plugins/lathe-mse.la plugins/lathe-gpt2.la plugins/lathe-text.la \
	plugins/lathe-llama.la plugins/lathe-jsonl-chat.la

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
plugins_lathe_gpt2_la_CFLAGS = $(PLUGIN_CFLAGS)
plugins_lathe_gpt2_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_lathe_gpt2_la_LIBADD = $(PLUGIN_LIBADD)

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
