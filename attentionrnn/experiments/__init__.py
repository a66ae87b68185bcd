"""The paper's experiments, one package each, on the shared engine (``attentionrnn.engine``)."""
