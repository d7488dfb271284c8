"""Read/write policies of the prefix layout as plain decision rules (DESIGN §2.4).

State of one sentence: ``read`` = j source units read, ``written`` = i−1 target units written,
``S`` = source length. A policy answers READ, WRITE, or ASK: ASK means the decision needs the
model's next-unit distributions (LSG inside its range), which the decoder computes and hands to
:meth:`LSGPolicy.decide`. Nothing here touches a model, torch or Ray.

- wait-k: unit i is written once min(k + i − 1, S) units are read (read k, then alternate).
- offline: read the whole source, then write.
- LSG (Guo et al., AAAI 2025): WRITE if KL(p_cur ‖ p_base) > δ (Eq. 3) or max p_cur > α (Eq. 4),
  with p_base the wait-1 distribution p(y_i | x_≤i, y_<i); the read position is held inside
  [min(L+i−1, S), min(L+i−1+U, S)] (Eq. 5): below it READ, at its top WRITE.

Units and tokens. Every READ and every WRITE moves one latency unit: a source word (a
character for Chinese) or a target word (character). The model emits tokens, and a token may
hold part of a unit, one unit, or several ("星期" is two characters; "Katze" five in character
units). The rule is exact: every unit is generated from exactly the source prefix its delay
records.

- A token that holds several units is written whole at the WRITE that generated it: all its
  units get that WRITE's delay (the model chose them with that source). The tokens of a
  character split over several count as one token with the text that completes them (a
  byte-level BPE model's broken byte shows only with the token after it: "¦" + " wä" is
  "\ufffd wä", two words written together).
- A unit begun and not yet complete (an open word, or the tokens of an unfinished character)
  is finished at the read position it began at: the decoder writes on without a READ and
  without asking the policy, so all of a unit's tokens share one source prefix.
- A word is complete only once the text after it starts with whitespace, so closing it needs
  one look-ahead token, the next word's first piece. That token was generated with the source
  of the word it closes, not with the source its own word is written with: it is discarded, the
  word is closed without it, and the next WRITE generates afresh from the prompt that ends with
  the closed word. The tokens of an unfinished character just before the look-ahead go with it.
  If the model, with more source, then glues onto the closed word ("house" + ","), what it
  writes starts a new unit anyway (the prediction gets a space there; the target ids stay the
  model's). The final WRITE (source complete) discards nothing.

So wait-k's delays satisfy delay_i ≤ min(k + i − 1, S), with equality except where one token
wrote several units: the later units of that token get its earlier, honest delay. LSG's
delays lie in Eq. 5's range of their unit, except those later units of a multi-unit token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from rollout.units import Unit, count_units

Action = Literal["read", "write", "ask"]
READ: Action = "read"
WRITE: Action = "write"
ASK: Action = "ask"


# --- wait-k ---------------------------------------------------------------------------------


def waitk_read_target(k: int, written: int, source_length: int) -> int:
    """Source units that must be read before target unit ``written + 1`` is written."""
    return min(k + written, source_length)


def waitk_delays(k: int, source_length: int, target_units: int) -> list[int]:
    """The wait-k schedule: delay of unit i (1-based) = min(k + i − 1, S)."""
    return [waitk_read_target(k, i, source_length) for i in range(target_units)]


@dataclass(frozen=True)
class WaitKPolicy:
    k: int
    name: str = "waitk"

    def action(self, read: int, written: int, source_length: int) -> Action:
        return READ if read < waitk_read_target(self.k, written, source_length) else WRITE


@dataclass(frozen=True)
class OfflinePolicy:
    """Full-sentence translation: every unit is written with the whole source read."""

    name: str = "offline"

    def action(self, read: int, written: int, source_length: int) -> Action:
        return READ if read < source_length else WRITE


# --- LSG ------------------------------------------------------------------------------------


def lsg_bounds(L: int, U: int, i: int, source_length: int) -> tuple[int, int]:
    """Eq. 5: the read position allowed when writing unit ``i`` (1-based)."""
    return min(L + i - 1, source_length), min(L + i - 1 + U, source_length)


def lsg_range_action(read: int, i: int, source_length: int, L: int, U: int) -> Action:
    """The range rule alone: READ below the range, WRITE at its top or with the source done."""
    if read >= source_length:
        return WRITE
    low, high = lsg_bounds(L, U, i, source_length)
    if read < low:
        return READ
    if read >= high:
        return WRITE
    return ASK


def lsg_write(kl: float, p_max: float, delta: float, alpha: float) -> bool:
    """Eq. 3 or Eq. 4: the current source prefix makes the next unit clear enough."""
    return kl > delta or p_max > alpha


def kl_exact(logp: np.ndarray, logq: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p·(log p − log q) over the full vocabulary (natural log)."""
    logp = np.asarray(logp, dtype=np.float64)
    logq = np.asarray(logq, dtype=np.float64)
    p = np.exp(logp)
    mask = p > 0  # 0·log 0 = 0
    return float(np.sum(p[mask] * (logp[mask] - logq[mask])))


def _tail_logprob(dist: Mapping[int, float], vocab_size: int) -> float:
    """Log-prob given to a token outside a top-K list: the leftover mass spread evenly."""
    known = min(1.0, math.fsum(math.exp(v) for v in dist.values()))
    rest = max(vocab_size - len(dist), 1)
    return math.log(max(1.0 - known, 1e-12) / rest)


def kl_topk(p: Mapping[int, float], q: Mapping[int, float], vocab_size: int) -> float:
    """Approximate KL(p ‖ q) from top-K log-prob lists (vLLM ``logprobs=K``).

    Sums over the union of both lists; a token missing from one list gets that list's
    leftover mass spread evenly over the rest of the vocabulary. Exact when K = vocabulary.
    """
    p_tail, q_tail = _tail_logprob(p, vocab_size), _tail_logprob(q, vocab_size)
    total = 0.0
    for tok in set(p) | set(q):
        lp, lq = p.get(tok, p_tail), q.get(tok, q_tail)
        total += math.exp(lp) * (lp - lq)
    return total


Distribution = np.ndarray | Mapping[int, float]


def divergence(cur: Distribution, base: Distribution, direction: str, vocab_size: int) -> float:
    """KL between the current and the wait-1 distribution; ``forward`` = KL(p_cur ‖ p_base)
    (the paper), ``reverse`` = KL(p_base ‖ p_cur) (their public code)."""
    a, b = (cur, base) if direction == "forward" else (base, cur)
    if isinstance(a, Mapping):
        return kl_topk(a, b, vocab_size)  # type: ignore[arg-type]
    return kl_exact(a, b)  # type: ignore[arg-type]


def max_prob(dist: Distribution) -> float:
    if isinstance(dist, Mapping):
        return math.exp(max(dist.values()))
    return float(np.exp(np.max(dist)))


@dataclass(frozen=True)
class LSGPolicy:
    delta: float
    alpha: float
    L: int
    U: int
    kl_direction: Literal["forward", "reverse"] = "forward"
    name: str = "lsg"

    def action(self, read: int, written: int, source_length: int) -> Action:
        return lsg_range_action(read, written + 1, source_length, self.L, self.U)

    def read_within_bounds(self, read: int, written: int, source_length: int) -> bool:
        """Whether one more READ keeps unit ``written + 1`` inside Eq. 5's range."""
        return read < lsg_bounds(self.L, self.U, written + 1, source_length)[1]

    def base_read(self, written: int, source_length: int) -> int:
        """Source units behind p_base: the wait-1 prefix x_≤i."""
        return min(written + 1, source_length)

    def decide(self, cur: Distribution, base: Distribution, vocab_size: int) -> tuple[Action, dict]:
        kl = divergence(cur, base, self.kl_direction, vocab_size)
        p_max = max_prob(cur)
        act = WRITE if lsg_write(kl, p_max, self.delta, self.alpha) else READ
        return act, {"kl": kl, "p_max": p_max}


PrefixPolicy = WaitKPolicy | OfflinePolicy | LSGPolicy


# Read/write policies of the prefix layout by ``type`` name: a new policy is a class above and
# one entry here (plus its config entry in ``orchestration.eval.config``).
READ_WRITE_POLICIES: dict[str, Callable[[Mapping[str, object]], PrefixPolicy]] = {
    "waitk": lambda p: WaitKPolicy(k=int(p["k"])),  # type: ignore[arg-type]
    "offline": lambda p: OfflinePolicy(),
    "lsg": lambda p: LSGPolicy(delta=float(p["delta"]), alpha=float(p["alpha"]),  # type: ignore[arg-type]
                               L=int(p["L"]), U=int(p["U"]),  # type: ignore[arg-type]
                               kl_direction=p.get("kl", "forward")),  # type: ignore[arg-type]
}


def build_read_write_policy(params: Mapping[str, object]) -> PrefixPolicy:
    """A prefix-layout policy by ``type`` name (:data:`READ_WRITE_POLICIES`)."""
    kind = params.get("type")
    if kind not in READ_WRITE_POLICIES:
        raise ValueError(f"unknown prefix-layout policy {kind!r}; known: {', '.join(READ_WRITE_POLICIES)}")
    return READ_WRITE_POLICIES[str(kind)](params)


# --- unit segmentation of generated tokens ---------------------------------------------------


def normalize_spaces(text: str) -> str:
    """Runs of whitespace (newlines included) become one space: they never count as units."""
    return " ".join(text.split())


def units_of_text(text: str, unit: Unit) -> int:
    return count_units(normalize_spaces(text), unit)


def within_bounds(policy: "PrefixPolicy", read: int, written: int, source_length: int) -> bool:
    """Whether one more READ before unit ``written + 1`` stays inside the policy's own bounds
    (wait-k and offline: only while the rule itself reads; LSG: below Eq. 5's upper bound)."""
    if isinstance(policy, LSGPolicy):
        return policy.read_within_bounds(read, written, source_length)
    return policy.action(read, written, source_length) == READ


class IncrementalText:
    """The decoded text of a growing token sequence, decoding only a short window per token.

    As vLLM's incremental detokenizer: the text added by new tokens is
    ``decode(ids[prefix:]) − decode(ids[prefix:read])`` with ``prefix`` a few tokens back, so
    a tokenizer whose decoding of a token depends on its neighbours (SentencePiece's leading
    space, byte-level BPE splitting one character over several tokens) gives the same text as
    decoding everything at once. A trailing incomplete UTF-8 character (``\ufffd``) is held
    back until the token that completes it arrives (``unfinished`` while it is).

    It also counts units as the text grows: ``complete`` = units that no later token can
    extend (characters: every non-whitespace character; words: every word followed by
    whitespace, or closed by :meth:`close` or :meth:`cut`), ``partial`` = whether a word is
    still open at the end.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], unit: Unit):
        self.decode, self.unit = decode, unit
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0     # ids[_prefix:_read] decode to the tail of ``text``
        self._read = 0
        self.complete = 0
        self.partial = False
        # Offsets in ``text`` where one unit ends and the next begins with no whitespace between
        # them: an over-long word cut there, or a closed word the next text glued onto.
        self.cuts: list[int] = []
        self.splits = 0          # closed words whose next text did not start with whitespace
        self._closed = False     # a word was closed and no text has followed it yet

    @property
    def unfinished(self) -> bool:
        """Tokens after the text that show no text yet (an incomplete character)."""
        return self._read < len(self.ids)

    @property
    def in_progress(self) -> bool:
        """A unit is begun and not complete: an open word, or an unfinished character."""
        return self.partial or self.unfinished

    def drop_unfinished(self) -> None:
        """Drop the tokens after the text (the start of a character not yet complete)."""
        del self.ids[self._read:]

    def close(self) -> None:
        """End the open word without the token that showed it ended (whose text starts with
        whitespace): that token is not added, and the tokens of an unfinished character before
        it go too. If the text that follows does not start with whitespace, it starts a new
        unit anyway: the prediction gets a space here (``splits`` counts these)."""
        self.drop_unfinished()
        if self.partial:
            self.complete += 1
            self.partial = False
            self._closed = True

    def cut(self) -> None:
        """End the open word here: the text that follows starts a new word (the prediction gets
        a space at this offset). The tokens of an unfinished character after it are dropped."""
        self.drop_unfinished()
        if self.partial:
            self.cuts.append(len(self.text))
            self.complete += 1
            self.partial = False

    def prediction_text(self) -> str:
        """The text with a space at every cut."""
        parts, last = [], 0
        for at in self.cuts:
            parts.append(self.text[last:at])
            last = at
        parts.append(self.text[last:])
        return " ".join(parts)

    def append(self, tok: int) -> str:
        """Add one token; return the text it completed ("" while a character is unfinished)."""
        tok = int(tok)
        before, after = self._window(tok)
        delta = self._delta(before, after)
        self._add(tok, delta)
        return delta

    def offer(self, tok: int) -> bool:
        """Add ``tok`` unless it closes the open word: then it is dropped and the word is closed
        (:meth:`close`). Returns whether ``tok`` was added.

        ``tok`` closes the open word when its own text starts with whitespace. The tokens of an
        unfinished character before it (their bytes left broken by ``tok``) go with it: text that
        a later token could still change is never part of a closed word."""
        tok = int(tok)
        before, after = self._window(tok)
        if self.partial:
            held = self.decode(self.ids[self._prefix:]) if self.unfinished else before
            own = after[len(held):] if after.startswith(held) else ""   # "" when tok completes them
            if own[:1].isspace():
                self.close()
                return False
        self._add(tok, self._delta(before, after))
        return True

    def _window(self, tok: int) -> tuple[str, str]:
        """The decoded window before ``tok`` (up to the text's end) and with it."""
        return (self.decode(self.ids[self._prefix:self._read]),
                self.decode(self.ids[self._prefix:] + [tok]))

    @staticmethod
    def _delta(before: str, after: str) -> str:
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        return after[len(before):]

    def _add(self, tok: int, delta: str) -> None:
        self.ids.append(tok)
        if not delta:
            return
        if self._closed and not delta[0].isspace():
            self.cuts.append(len(self.text))
            self.splits += 1
        self._closed = False
        self.text += delta
        self._prefix, self._read = self._read, len(self.ids)
        self._count(delta)

    def _count(self, delta: str) -> None:
        for ch in delta:
            if ch.isspace():
                if self.partial:
                    self.complete += 1
                    self.partial = False
            elif self.unit == "char":
                self.complete += 1
            else:
                self.partial = True

    def units(self, finished: bool) -> int:
        """Units written so far; with ``finished`` the open word counts too."""
        return self.complete + (1 if finished and self.partial else 0)
