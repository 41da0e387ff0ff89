EXTRA_DIST += bench/gpt2-124m.ini bench/gpt2-124m.sh bench/lora-vs-full.sh
EXTRA_DIST += bench/tokenizer.sh bench/tokenizer_bench.c
EXTRA_DIST += bench/comm.sh bench/scaling.sh
EXTRA_DIST += bench/recompute.sh
