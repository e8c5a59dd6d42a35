"""Log-probabilities from a model's raw logits, for backends that hold them (gguf, transformers)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.inference.api import TokenLogprob


def token_logprob(logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """`token`'s log-probability under the softmax of `logits` (one position, the whole vocabulary),
    with the `top` most likely tokens there. `piece` gives a token's bytes. The distribution is the
    model's own, before temperature and the other sampling filters, as in OpenAI's and vLLM's."""
    scores = np.asarray(logits, dtype=np.float32)
    shifted = scores - scores.max()
    log_total = float(np.log(np.exp(shifted, dtype=np.float64).sum()))
    alternatives: tuple[TokenLogprob, ...] = ()
    if top:
        best = np.argpartition(-shifted, top - 1)[:top]
        best = best[np.argsort(-shifted[best], kind="stable")]
        alternatives = tuple(_entry(int(t), float(shifted[t]) - log_total, piece) for t in best)
    return _entry(token, float(shifted[token]) - log_total, piece, alternatives)


def _entry(
    token: int, logprob: float, piece: Callable[[int], bytes], top: tuple[TokenLogprob, ...] = ()
) -> TokenLogprob:
    raw = piece(token)
    return TokenLogprob(raw.decode("utf-8", errors="replace"), min(logprob, 0.0), raw, top)
