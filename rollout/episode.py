"""The interleaved, append-only token layouts of a streaming episode (DESIGN §2.1).

    pieces:   [system] [user: c_1] [assistant: y_1] [user: c_2] [assistant: y_2] ... [user: c_T END] [assistant: y_T]
    continue: [system] [user: c_1] [assistant: y_1] [user: c_2] [assistant: (y_1) y_2] ... [user: c_T END] [assistant: (y_<T) y_T]
    prefix:   [system] [user: x_≤r1] [assistant: y_1] [user: x_≤r2] [assistant: (y_1) y_2] ... [user: x END] [assistant: (y_<T) y_T]

(y_<t): the translation so far, restated as an observation, which the policy continues: in
``continue`` and ``prefix`` the model sees its translation as one text it continues, never a
sentence per turn (the ``pieces`` layout tends to make each piece a sentence of its own);
``prefix`` also shows the source read so far as one text. The turn markers come from the model's own chat template: :class:`ChatLayout` renders the
template around placeholder texts once and keeps the strings that surround each turn. An
:class:`Episode` then grows one token list by appending: observation tokens (mask 0) are
encoded from text, action tokens (mask 1) are exactly the ids the policy sampled
(token-in/token-out: nothing is re-tokenised between rollout and learner). Because every
append starts right after a special end-of-turn token, the ids equal those of the whole
conversation rendered by the template and tokenised at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rollout.units import Unit, chunk_source, count_units, normalize_spaces, step_delay
from rollout.writing import completion_delays, longest_allowed_prefix, stable_length, unit_bound

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]

EPISODE_MODES = ("pieces", "continue", "prefix")
_SYS, _U1, _A1, _U2 = "\x00SYS\x00", "\x00USER1\x00", "\x00ASSISTANT1\x00", "\x00USER2\x00"


class ChatTemplateError(ValueError):
    """The chat template does not render turns in an append-only way."""


class EpisodeTooLong(ValueError):
    """An episode's prompt no longer fits the engine's context."""


@dataclass(frozen=True)
class ChatLayout:
    """The text around each turn, as the chat template renders it.

    ``system_open + SYSTEM + system_close`` opens the conversation; a user turn is
    ``user_open + TEXT + user_close`` where ``user_close`` ends with the assistant header
    (the generation prompt); the policy writes its piece and ``end_of_turn`` (a special
    token such as ``<|im_end|>``); ``after_turn`` is template text after it (ChatML: "\\n").
    """

    system_open: str
    system_close: str
    user_open: str
    user_close: str
    end_of_turn: str
    after_turn: str

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "ChatLayout":
        """Derive the layout from a HF tokenizer's chat template."""
        def render(messages: list[dict[str, str]], gen: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

        special = [t for t in getattr(tokenizer, "all_special_tokens", [])]
        special += [str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        sys_msg = {"role": "system", "content": _SYS}
        u1, a1 = {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}
        u2 = {"role": "user", "content": _U2}
        return cls.from_renders(
            render([sys_msg], False), render([sys_msg, u1], True),
            render([sys_msg, u1, a1], False), render([sys_msg, u1, a1, u2], True), special)

    @classmethod
    def from_renders(cls, r_sys: str, r_u1: str, r_a1: str, r_u2: str,
                     special_tokens: Sequence[str]) -> "ChatLayout":
        """Cut the four renders (system; +user; +assistant; +user) into turn pieces."""
        def fail(why: str) -> ChatTemplateError:
            return ChatTemplateError(
                f"chat template is not append-only ({why}); the interleaved layout needs a "
                "template where adding a turn only appends text (ChatML, Llama 3, ... do)")

        if r_sys.count(_SYS) != 1:
            raise fail("the system message is not rendered once")
        system_open, system_close = r_sys.split(_SYS)
        if not r_u1.startswith(r_sys):
            raise fail("adding a user turn changes the system turn")
        user_open, _, user_close = r_u1[len(r_sys):].partition(_U1)
        if not _ or not r_a1.startswith(r_u1) or not r_a1[len(r_u1):].startswith(_A1):
            raise fail("the assistant turn does not follow the generation prompt")
        assistant_end = r_a1[len(r_u1) + len(_A1):]
        if r_u2 != r_a1 + user_open + _U2 + user_close:
            raise fail("a second user turn renders differently from the first")
        eot = max((t for t in special_tokens if t and assistant_end.startswith(t)), key=len, default=None)
        if eot is None:
            raise fail(f"the assistant turn ends with {assistant_end!r}, not a special token")
        return cls(system_open, system_close, user_open, user_close, eot, assistant_end[len(eot):])

    def opening(self, system: str, user: str) -> str:
        """Text of the first observation: system turn, first user turn, assistant header."""
        return self.system_open + system + self.system_close + self.user_open + user + self.user_close

    def next_turn(self, user: str) -> str:
        """Text appended after the end-of-turn token: a new user turn and assistant header."""
        return self.after_turn + self.user_open + user + self.user_close


@dataclass
class Trajectory:
    """One finished streaming episode, as the learner and the reward service need it."""

    token_ids: list[int]
    action_mask: list[int]          # 1 on sampled tokens (incl. their end of turn), 0 elsewhere
    logprobs: list[float]           # sampled log-prob per token; 0.0 where action_mask is 0
    pieces: list[str]               # what each step wrote ("" = wait)
    delays: list[int]               # source units read per target unit
    hypothesis: str
    source_length: int
    num_steps: int
    truncated_steps: int = 0        # steps that hit their token cap without ending the turn
    meta: dict[str, Any] = field(default_factory=dict)
    cut_steps: int = 0              # steps cut by a rule (unit bound, end marker)


@dataclass(frozen=True)
class WriteRules:
    """What each step may write (``rollout.writing``): token caps, the unit bound of a step
    before the source is complete (``units_per_read``), and optionally a fixed wait-k schedule
    (``schedule_k``: at most read − k + 1 units, with the end of turn withheld until the cap, so
    the schedule is what the model writes, not what it chooses)."""

    max_new_tokens_per_step: int = 32
    max_new_tokens_final: int = 256
    final_tokens_per_source_unit: float | None = None
    units_per_read: float | None = None
    schedule_k: int | None = None
    max_total_tokens: int | None = None   # the engine's context (max_model_len): prompt + reply


class Episode:
    """A streaming episode being built step by step (one trajectory).

    ``prompt_ids`` is what to generate from at the current step; :meth:`add_action` appends
    the step's sampled ids (cut where a rule says so) and, unless the source is complete, the
    next observation. The ``mode`` says what a new turn shows (``rollout.config.EpisodeConfig``):

    - ``pieces``: the next source chunk as a user turn; each reply is one piece, and the
      translation is the pieces joined (spaces between them for word units);
    - ``continue``: the next chunk as a user turn, then the reply opens with the translation so
      far (its token ids exactly as sampled, an observation) and the policy continues it;
    - ``prefix``: the whole source read so far as a user turn, then the translation so far.

    Every turn is appended, never rewritten, so the prefix cache and the learner's single pass
    over the trajectory hold for all three.
    """

    def __init__(self, layout: ChatLayout, encode: Encode, decode: Decode, *, source: str,
                 system_prompt: str, end_marker: str, source_unit: Unit, target_unit: Unit,
                 chunk_size: int, end_of_turn_id: int, mode: str = "pieces",
                 rules: WriteRules = WriteRules()):
        if mode not in EPISODE_MODES:
            raise ValueError(f"unknown episode layout {mode!r}; known: {', '.join(EPISODE_MODES)}")
        self.layout, self._encode, self._decode = layout, encode, decode
        self.source = source
        self.source_unit = source_unit
        self.chunks = chunk_source(source, source_unit, chunk_size)
        if not self.chunks:
            raise ValueError("empty source: an episode needs at least one source unit")
        self.source_length = count_units(source, source_unit)
        self.chunk_size, self.end_marker = chunk_size, end_marker
        self.target_unit, self.end_of_turn_id = target_unit, end_of_turn_id
        self.mode, self.rules = mode, rules
        self.step = 0                    # 0-based index of the chunk being answered
        self.pieces: list[str] = []
        self.truncated_steps = 0
        self.cut_steps = 0
        self.token_ids: list[int] = []
        self.action_mask: list[int] = []
        self.logprobs: list[float] = []
        self.target_ids: list[int] = []  # the translation's ids so far (continue, prefix)
        self.text = ""                   # the translation so far, as decoded
        self._step_ends: list[int] = []  # len(text) after each step
        self._reads: list[int] = []      # source units read at each step
        self._observe(layout.opening(system_prompt, self._user_text(0)))

    @property
    def num_steps(self) -> int:
        return len(self.chunks)

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    @property
    def is_last_step(self) -> bool:
        return self.step == self.num_steps - 1

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.token_ids)

    @property
    def read(self) -> int:
        """Source units read at the current step."""
        return step_delay(self.step + 1, self.chunk_size, self.source_length)

    @property
    def delays(self) -> list[int]:
        """Delays of the units written so far (``rollout.writing.completion_delays``)."""
        return completion_delays(self.text, self.target_unit, self._step_ends, self._reads)

    def max_new_tokens(self) -> int:
        """This step's token cap; the last step's follows the source length, and no step's
        reply may run past the engine's context (``EpisodeTooLong`` when not one token fits)."""
        r = self.rules
        if not self.is_last_step:
            cap = r.max_new_tokens_per_step
        elif r.final_tokens_per_source_unit is None:
            cap = r.max_new_tokens_final
        else:
            cap = min(r.max_new_tokens_final, math.ceil(r.final_tokens_per_source_unit * self.source_length) + 8)
        if r.max_total_tokens is None:
            return cap
        room = r.max_total_tokens - len(self.token_ids)
        if room < 1:
            raise EpisodeTooLong(
                f"a source of {self.source_length} units needs more than {r.max_total_tokens} tokens by step "
                f"{self.step + 1} of {self.num_steps} in the {self.mode} layout; raise rollout.engine.max_model_len "
                "or lower data.max_source_units")
        return min(cap, room)

    def min_new_tokens(self) -> int:
        """Tokens before the end of turn may be chosen: the whole cap under a fixed schedule (it
        decides what is kept, not the model), else 0."""
        return self.max_new_tokens() if self.rules.schedule_k is not None and not self.is_last_step else 0

    def _user_text(self, k: int) -> str:
        last = k == self.num_steps - 1
        if self.mode == "prefix":
            read = step_delay(k + 1, self.chunk_size, self.source_length)
            text = chunk_source(self.source, self.source_unit, read)[0]
        else:
            text = self.chunks[k]
        return f"{text} {self.end_marker}" if last else text

    def _observe(self, text: str, then: Sequence[int] = ()) -> None:
        ids = self._encode(text) + list(then)
        self.token_ids += ids
        self.action_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def _written(self, body: Sequence[int]) -> str:
        """The whole translation if ``body`` were this step's tokens."""
        if self.mode == "pieces":
            piece = self._decode(body).strip()
            glue = "" if self.target_unit == "char" or not self.text or not piece else " "
            return self.text + glue + piece
        return self._decode(self.target_ids + list(body))

    def _added(self, body: Sequence[int]) -> str:
        return self._decode(body) if self.mode == "pieces" else self._written(body)[len(self.text):]

    def add_action(self, token_ids: Sequence[int], logprobs: Sequence[float] | None = None) -> str:
        """Append one step's sampled ids (ending with end-of-turn unless the cap cut them).

        Returns the text the step added. The kept ids are the longest prefix that writes no end
        marker and, before the source is complete, leaves at most the unit bound of
        :func:`rollout.writing.unit_bound` in the translation; a step cut by a rule or by its
        token cap gets the end-of-turn token appended as an observation (mask 0: the policy did
        not sample it).
        """
        if self.done:
            raise RuntimeError("episode already finished")
        ids = list(token_ids)
        lps = [0.0] * len(ids) if logprobs is None else [float(x) for x in logprobs]
        if len(lps) != len(ids):
            raise ValueError(f"{len(ids)} token ids but {len(lps)} log-probs")
        ended = bool(ids) and ids[-1] == self.end_of_turn_id
        body = ids[:-1] if ended else ids
        limit = unit_bound(self.read, self.source_length, units_per_read=self.rules.units_per_read,
                           schedule_k=self.rules.schedule_k)
        keep = longest_allowed_prefix(body, self._added, self._written, self.target_unit,
                                      limit=limit, marker=self.end_marker)
        if keep < len(body):
            self.cut_steps += 1
            body, ended = body[:keep], False
        elif not ended:
            self.truncated_steps += 1
        action = body + ([self.end_of_turn_id] if ended else [])
        self.token_ids += action
        self.action_mask += [1] * len(action)
        self.logprobs += lps[:len(action)]
        if not ended:
            self._observe(self.layout.end_of_turn)
        before = self.text
        self.text = self._written(body)
        if self.mode != "pieces":
            self.target_ids += body
        piece = self.text[stable_length(before, self.text):]
        self.pieces.append(piece.strip() if self.mode == "pieces" else piece)
        self._step_ends.append(len(self.text))
        self._reads.append(self.read)
        self.step += 1
        if not self.done:
            restate = self.target_ids if self.mode != "pieces" else []
            self._observe(self.layout.next_turn(self._user_text(self.step)), restate)
        return self.pieces[-1]

    def trajectory(self, **meta: Any) -> Trajectory:
        if not self.done:
            raise RuntimeError(f"episode unfinished: step {self.step} of {self.num_steps}")
        # a step whose text ended in an unfinished character counts only what the final text keeps
        ends = [stable_length(self.text[:n], self.text) for n in self._step_ends]
        return Trajectory(
            token_ids=list(self.token_ids), action_mask=list(self.action_mask),
            logprobs=list(self.logprobs), pieces=list(self.pieces),
            delays=completion_delays(self.text, self.target_unit, ends, self._reads),
            hypothesis=normalize_spaces(self.text),
            source_length=self.source_length, num_steps=self.num_steps,
            truncated_steps=self.truncated_steps, meta=dict(meta), cut_steps=self.cut_steps)


def hf_codec(tokenizer: Any) -> tuple[Encode, Decode, int]:
    """encode/decode functions and the end-of-turn id for a HF tokenizer and its layout."""
    layout = ChatLayout.from_tokenizer(tokenizer)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    eot_ids = encode(layout.end_of_turn)
    if len(eot_ids) != 1:
        raise ChatTemplateError(f"end-of-turn {layout.end_of_turn!r} is not one token")
    return encode, decode, eot_ids[0]


LANGUAGE_NAMES = {"de": "German", "en": "English", "zh": "Chinese", "fr": "French",
                  "es": "Spanish", "ja": "Japanese", "ru": "Russian", "cs": "Czech"}


def system_prompt_for(template: str, src_lang: str, tgt_lang: str, end_marker: str) -> str:
    """Fill the instruction template with language names and the end-of-source marker."""
    names = {k: LANGUAGE_NAMES.get(v, v) for k, v in (("src_lang", src_lang), ("tgt_lang", tgt_lang))}
    return template.format(end_marker=end_marker, **names)
