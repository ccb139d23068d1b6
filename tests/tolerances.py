"""How close two float32 computations of the same log-probabilities must be.

Batch composition changes which float32 kernels run (blocking, vector width, reduction order), so
the same image in different batches gives slightly different numbers. The rounding in
log_softmax's log-sum-exp grows with the size of the row's logits, which the row's largest
|log-probability| bounds: the tolerance is relative to that, not to each element.
"""

import torch

# float32 has 24 bits (eps 1.2e-7); a few hundred roundings over convolutions, a GEMM of 800 and
# a log-sum-exp stay well inside 1e-5 of the row's scale. On a confident row (scale ~20) that is
# looser than a flat 1e-5, which is the point: the flat bound failed at random on such rows.
RELATIVE_TO_ROW = 1e-5
FLOOR = 1e-6


def assert_log_probs_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Row by row: |got - expected| <= FLOOR + RELATIVE_TO_ROW * max|expected row|."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    got, expected = got.double(), expected.double()
    scale = expected.abs().amax(dim=-1, keepdim=True)
    excess = (got - expected).abs() - (FLOOR + RELATIVE_TO_ROW * scale)
    worst = int(excess.amax(dim=-1).argmax())
    assert (excess <= 0).all(), (
        f"row {worst} differs by {(got - expected)[worst].abs().max().item():.3g} "
        f"(row scale {scale[worst].item():.3g})"
    )
