"""CLAM-SB (Lu et al., Nat Biomed Eng 2021): single-branch clustering-constrained attention MIL, written from the paper.

The paper's model: each instance is projected by a fully connected layer and ReLU (512-d), one gated attention branch
(tanh and sigmoid gates, 256-d) weighs the projected instances, and a linear slide classifier reads their attention-
weighted sum. Beside it, an instance classifier per class (positive / negative for that class) is trained on pseudo-
labels the attention gives: in the slide's own class's classifier the k most attended instances are positive and the k
least attended negative ("in-class"); where classes are mutually exclusive, the other classes' classifiers learn the k
most attended instances as negative ("out-of-class"). The instance loss is the smooth top-1 SVM (Berrada et al. 2018,
margin 1, temperature 1) and the training loss c1 * bag loss + (1 - c1) * instance loss (the paper's c1 = 0.7, k = 8).

mixmag's readings, said here: k is clamped to half the bag (at most n // 2 instances a side, so no instance is both
positive and negative; a one-instance bag has no instance term); the out-of-class term is used for multiclass tasks
only (a binary label says presence or absence, not one of exclusive subtypes); survival and regression runs have no
class to pseudo-label, so they train the bag loss alone (docs/method.md). The instance loss of a batch is the mean over
its slides with pseudo-labels of each slide's mean over its pseudo-labelled (instance, classifier) pairs. The paper's
dropout is left out (the other aggregators have none). As the classifier is linear, its logit is
sum_k a_k (w . h_k) + b: each instance's share a_k (w . h_k) is exact, as AB-MIL's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aggregator import Aggregator, full_mask
from .projection import stored_linear

DIM = 512  # the paper's instance projection width
ATTENTION_DIM = 256  # its attention network's width
TOP_K = 8  # k: instances pseudo-labelled a side
BAG_WEIGHT = 0.7  # c1: the bag loss's weight in the total
SVM_MARGIN = 1.0  # alpha of the smooth top-1 SVM
SVM_TEMPERATURE = 1.0  # tau of the smooth top-1 SVM


def smooth_top1_svm(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Berrada et al.'s smooth top-1 SVM loss of (..., classes) scores: tau log sum_j exp((alpha [j != y] + s_j - s_y)
    / tau), elementwise (no reduction)."""
    margin = SVM_MARGIN * (1 - F.one_hot(target, scores.shape[-1]).to(scores.dtype))
    shifted = (scores + margin - scores.gather(-1, target[..., None])) / SVM_TEMPERATURE
    return SVM_TEMPERATURE * torch.logsumexp(shifted, dim=-1)


def _rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, ...) at each bag's instances `index` (B, k): (B, k, ...)."""
    return values.gather(1, index.reshape(*index.shape, *[1] * (values.dim() - 2)).expand(-1, -1, *values.shape[2:]))


class CLAMSB(Aggregator):
    """(B, N, D) instances + (B, N) mask -> logits of the attention-pooled projections; `hidden` is unused (the paper's
    512 and 256). In training mode with gradients on, `pool` keeps the k most and least attended instances' instance
    logits, which `training_loss` turns into the instance term."""

    attends = True  # the attention weights are the logit's decomposition: attribution "auto" draws them
    decomposes = True
    reads_classes = True  # the instance loss pseudo-labels instances by their bag's class

    def __init__(self, in_dim: int, hidden: int = 16, n_outputs: int = 1) -> None:
        super().__init__(in_dim, hidden, n_outputs)
        self.fc = nn.Linear(in_dim, DIM)
        self.V = nn.Linear(DIM, ATTENTION_DIM)
        self.U = nn.Linear(DIM, ATTENTION_DIM)
        self.h = nn.Linear(ATTENTION_DIM, 1, bias=False)
        self.classifier = nn.Linear(DIM, n_outputs)
        self.n_classes = max(2, n_outputs)  # one logit stands for two classes (binary)
        self.instance = nn.Linear(DIM, 2 * self.n_classes)  # per class: (negative, positive) logits
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, attention and each instance's share a_k (w . h_k), summed over the instances exactly logit - bias."""
        return self.pool(self.project(z), full_mask(z, mask))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(..., 2 x 256 + outputs + 2 classes): the gates' inputs V h + b_V and U h + b_U, w . h and the instance
        logits of every instance's projection h = ReLU(W z + b) (float16 bags read block by block)."""
        h = F.relu(stored_linear(z, self.fc.weight, self.fc.bias))
        weight = torch.cat([self.V.weight, self.U.weight, self.classifier.weight, self.instance.weight])
        bias = torch.cat([self.V.bias, self.U.bias, torch.zeros_like(self.classifier.bias), self.instance.bias])
        return F.linear(h, weight, bias)

    def pool(self, projected: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`contributions` from the instances' projections (B, N, `project`'s width), padded or not; keeps the
        pseudo-labelled instances' logits when training."""
        if not bool(mask.all()):
            projected = torch.where(mask[..., None], projected, torch.zeros((), device=projected.device))
        a, outputs = ATTENTION_DIM, self.classifier.out_features
        gate = torch.tanh(projected[..., :a]) * torch.sigmoid(projected[..., a : 2 * a])
        scores = self.h(gate).squeeze(-1)
        alpha = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        alpha = torch.where(mask, alpha, torch.zeros_like(alpha))  # an all-padding row stays all zero
        per_instance = projected[..., 2 * a : 2 * a + outputs]
        share = alpha[..., None] * per_instance
        if self.training and torch.is_grad_enabled():
            self.pending = self._pseudo_labelled(scores, mask, projected[..., 2 * a + outputs :])
        if outputs == 1:
            share = share[..., 0]
        return share.sum(1) + self.classifier.bias, alpha, share

    def _pseudo_labelled(
        self, scores: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The instance logits (B, k', classes, 2) of each bag's k' most and k' least attended instances and which of
        the k' slots are real (B, k'): k clamped to half the bag's real instances."""
        k = min(TOP_K, scores.shape[1])
        top = scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).indices
        bottom = scores.masked_fill(~mask, float("inf")).topk(k, dim=1, largest=False).indices
        per_class = logits.unflatten(-1, (self.n_classes, 2))  # (B, N, classes, 2)
        sides = (mask.sum(1) // 2).clamp(max=TOP_K)
        valid = torch.arange(k, device=scores.device)[None, :] < sides[:, None]
        return _rows(per_class, top), _rows(per_class, bottom), valid

    def instance_loss(self, classes: torch.Tensor) -> torch.Tensor | None:
        """The instance term of the last training forward, with each bag's class (B,); None if no bag has one."""
        if self.pending is None:
            return None
        top, bottom, valid = self.pending
        self.pending = None
        rows = torch.arange(top.shape[0], device=top.device)
        ones, zeros = torch.ones_like(valid, dtype=torch.long), torch.zeros_like(valid, dtype=torch.long)
        terms = [smooth_top1_svm(top[rows, :, classes], ones), smooth_top1_svm(bottom[rows, :, classes], zeros)]
        counts = [valid, valid]
        if self.classifier.out_features > 1:  # out-of-class: every other class's classifier, the top k negative
            others = torch.arange(self.n_classes, device=top.device)[None, :] != classes[:, None]  # (B, classes)
            terms.append(smooth_top1_svm(top, zeros[..., None].expand(-1, -1, self.n_classes)))  # (B, k', classes)
            counts.append(valid[:, :, None] & others[:, None, :])
        total = torch.stack([(t * c).flatten(1).sum(1) for t, c in zip(terms, counts, strict=True)]).sum(0)
        pairs = torch.stack([c.flatten(1).sum(1) for c in counts]).sum(0)
        labelled = pairs > 0
        if not bool(labelled.any()):
            return None
        return (total[labelled] / pairs[labelled]).mean()

    def training_loss(self, bag_loss: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """c1 * bag loss + (1 - c1) * instance loss; the bag loss alone where the task has no classes (survival,
        regression) or no bag has an instance to pseudo-label."""
        instance = self.instance_loss(classes) if classes is not None else None
        self.pending = None
        if instance is None:
            return bag_loss
        return BAG_WEIGHT * bag_loss + (1 - BAG_WEIGHT) * instance
