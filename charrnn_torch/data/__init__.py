"""Text as ids: reading and fetching a corpus (corpus.py), the vocabularies (vocab.py), the encoded cache
(cache.py), the built-in code corpus (code_corpus.py) and the batchers that cut it into windows (batchers.py)."""
