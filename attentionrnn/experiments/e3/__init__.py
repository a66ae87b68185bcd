"""Experiment E3: visual question answering with MCB (Fukui et al., 2016) and AttentionRNN.

MCB's spatial attention (compact bilinear pooling of image and question, two glimpses) is
replaced by AttentionRNN conditioned on the question (Khandelwal & Sigal, ICCV 2019). ``data``
reads easy-VQA, generates a Sort-of-CLEVR-style relational set and reads VQA v2 from a folder;
``model`` is the network (CNN, GRU / LSTM question encoder, MCB, the attention variants);
``train`` one run on the shared engine; ``reproduce`` the budgets and the table; ``figures`` the
attention masks and learning curves; ``commands`` the ``attentionrnn e3`` command line.
"""
