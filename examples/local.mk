EXTRA_DIST += examples/pretrain-tiny.ini examples/data/tiny-corpus.txt examples/make-corpus.py examples/data/chat.jsonl examples/data/chat-eval.jsonl examples/data/make-chat.py
EXTRA_DIST += examples/reward-template.json
