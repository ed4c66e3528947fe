"""The one normalisation of metanet's images: mean and std 0.5 per channel, so inputs lie in [-1, 1].

The stages train with it (:mod:`metanet.data.images`), and the exported model's timm config carries it
(:mod:`metanet.search_spaces.timm_models`): a backbone sees at deployment what it saw in training. A module of
its own, without torch, so that ``import metanet`` stays light.
"""
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
