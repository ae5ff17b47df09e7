"""xlstm-autotune: the search engine that tunes xLSTM inference scheduling knobs."""

__version__ = "0.1.0"
