EXTRA_DIST += examples/pretrain-tiny.ini examples/data/tiny-corpus.txt examples/make-corpus.py
