"""Experiment E2: image classification on CIFAR-10 / CIFAR-100 with "Learn to Pay Attention".

LTPA's VGG-att3 (Jetley et al., ICLR 2018) with its attention estimator replaced by AttentionRNN
(Khandelwal & Sigal, ICCV 2019). ``data`` reads CIFAR (the JPEG tar or the python pickles) and
augments batches, ``model`` is the network, ``train`` the recipe of one run on the shared engine,
``reproduce`` the budgets and the results table, ``figures`` the attention maps and learning
curves and ``commands`` the ``attentionrnn e2`` command line.
"""
