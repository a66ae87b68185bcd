"""Experiment E1: attribute prediction on MREF / MDIST / MBG with the PAN network.

``data`` reads the dataset files, ``train`` is the recipe of one run on the shared engine,
``metrics`` the accuracy-by-scale and attention-correctness measures, ``reproduce`` the budgets
and the results table, ``figures`` the masks and learning curves, ``demo`` the README's main job
and ``commands`` the ``attentionrnn e1`` command line.
"""
