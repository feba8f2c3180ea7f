"""Mutant: the load loss thresholds each token at the k-th largest *clean* logit instead of the noisy one."""

import sys

import reference

from ._base import build


def load_loss(logits, noisy_logits, noise_std, k):
    reference.load_loss(logits, noisy_logits, noise_std, k)  # the spec's validation
    return reference.load_loss(logits, logits, noise_std, k)


sys.modules[__name__] = build("load_loss_wrong_threshold", __doc__, load_loss=load_loss)
