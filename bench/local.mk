EXTRA_DIST += bench/gpt2-124m.ini bench/gpt2-124m.sh
