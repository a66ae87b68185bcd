"""Experiment E4: image editing with AttentionRNN masks (ModularGAN, Zhao et al., ECCV 2018).

A ModularGAN-style editor (encoder, one transformer module per attribute whose mask blends the
edit into the features, reconstructor, discriminator with an attribute classifier) whose masks
come from a conv head, AttentionRNN or Block AttentionRNN (Khandelwal & Sigal, ICCV 2019).
``data`` builds the CPU-scale task (recolour the queried digit of an MREF / MDIST image; the
ground-truth edit is rendered from the instance map) and reads CelebA from a folder, one module
per reader; ``model`` the networks, ``losses`` what trains them (``locate`` the supervised stage
of ``--locate-steps``); ``metrics`` edit success, preservation, mask correctness and KID;
``train`` one run on the shared engine; ``reproduce`` the budgets and the table; ``figures`` the
sample grids and curves; ``screen`` decides the screening of issue 34 on the validation split;
``commands`` the ``attentionrnn e4`` command line beyond ``train``, ``reproduce``, ``table``.
"""
