"""Text as ids: reading and fetching a corpus (corpus.py), a corpus of many files (files_corpus.py; the built-in
code corpus, code_corpus.py, is one), the vocabularies (vocab.py), the encoded cache (cache.py) and the batchers
that cut it into windows (batchers.py)."""
