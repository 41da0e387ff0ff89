EXTRA_DIST += examples/pretrain-tiny.ini examples/data/tiny-corpus.txt examples/make-corpus.py examples/data/chat.jsonl examples/data/chat-eval.jsonl examples/data/make-chat.py
EXTRA_DIST += examples/reward-template.json
EXTRA_DIST += examples/arith-sft.ini examples/grpo-arith.ini examples/dpo-arith.ini examples/sft-full.ini \
	examples/sft-lora.ini examples/arith/make-arith.py examples/arith/sft.txt examples/arith/prompts.jsonl \
	examples/arith/prefs.jsonl examples/arith/tokenizer.json
