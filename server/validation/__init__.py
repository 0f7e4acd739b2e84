"""Result validation: the content of a result, its canonical digest, and the comparators of two results."""
