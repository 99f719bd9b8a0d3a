"""Using a trained model: sampling, beam search and scoring (sample.py), dynamic evaluation (dynamic.py)."""
