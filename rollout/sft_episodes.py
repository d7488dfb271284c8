"""SFT data for the warm start (DESIGN §2.5): parallel pairs as streaming episodes.

A reference is cut into one piece per streaming step with the segmentation rule, and the
pieces are fed to the very :class:`~rollout.episode.Episode` the rollout builds, as if the
policy had written them: token ids and action masks are those a rollout with these outputs
would produce, so the SFT model is trained on exactly the layout it will act in.

``prefix_samples`` builds the other layout for comparison (``bench sft``): "prefix
fine-tuning", one sample per write in the prefix layout exactly as prefix-layout inference
prompts it (``rollout.prefix_layout.PrefixPrompter``: the source read so far in the user turn,
the translation so far as the assistant prefix). ``prefix_sequence`` is the same data as one
sequence per pair (the whole source, the whole target) with, for every target token, the
source tokens read when it is written: what SimulMask training (``learner.simulmask``) needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rollout.episode import Trajectory
from rollout.prefix_layout import PrefixPrompter
from rollout.runner import EpisodeFactory
from rollout.types import Source
from rollout.units import Unit, count_units, num_steps, split_units, step_delay, unit_of
from rollout.writing import unit_bound


def emitted_lengths(source_length: int, target_length: int, chunk_size: int, lag_k: int) -> list[int]:
    """Target units written in total after each step t = 1..T (the segmentation rule).

    After reading t·m source units the reference prefix of length
    ⌊|ref| · max(0, t·m − k) / |src|⌋ is out; the last step writes the rest.
    """
    if source_length < 1:
        raise ValueError("empty source")
    if chunk_size < 1 or lag_k < 0 or target_length < 0:
        raise ValueError(f"bad segmentation arguments: chunk_size={chunk_size} lag_k={lag_k} "
                         f"target_length={target_length}")
    steps = num_steps(source_length, chunk_size)
    out = [min(target_length, target_length * max(0, t * chunk_size - lag_k) // source_length)
           for t in range(1, steps)]
    return out + [target_length]


def reference_pieces(source: str, reference: str, source_unit: Unit, target_unit: Unit,
                     chunk_size: int, lag_k: int, units_per_read: float | None = None) -> list[str]:
    """The reference split into one piece per streaming step ("" = wait).

    With ``units_per_read`` the pieces also keep the episode's unit bound
    (``rollout.writing.unit_bound``): a step never writes more than a rollout may."""
    units = split_units(reference, target_unit)
    source_length = count_units(source, source_unit)
    ends = emitted_lengths(source_length, len(units), chunk_size, lag_k)
    for t in range(len(ends) - 1):
        bound = unit_bound(step_delay(t + 1, chunk_size, source_length), source_length,
                           units_per_read=units_per_read, schedule_k=None)
        if bound is not None:
            ends[t] = min(ends[t], bound)
    glue = "" if target_unit == "char" else " "
    starts = [0] + ends[:-1]
    return [glue.join(units[a:b]) for a, b in zip(starts, ends)]


def sft_trajectory(factory: EpisodeFactory, source: Source, lag_k: int) -> Trajectory:
    """The episode of ``source`` in which every step writes its reference piece.

    Each piece is encoded on its own, as the policy would sample it (in the layouts whose replies
    continue the translation, a piece after earlier text carries its leading space), and closed
    with the end-of-turn token; a wait is the end-of-turn token alone.
    """
    if source.reference is None:
        raise ValueError(f"source {source.index} has no reference")
    ep = factory.make(source)
    pieces = reference_pieces(source.text, source.reference, unit_of(source.src_lang),
                              unit_of(source.tgt_lang), ep.chunk_size, lag_k, factory.cfg.units_per_read)
    if len(pieces) != ep.num_steps:
        raise ValueError(f"source {source.index}: {len(pieces)} reference pieces for {ep.num_steps} steps")
    glue = "" if unit_of(source.tgt_lang) == "char" else " "
    written = False
    for piece in pieces:
        text = (glue if written and piece and ep.mode != "pieces" else "") + piece
        ep.add_action(factory.encode(text) + [factory.end_of_turn_id] if text else [factory.end_of_turn_id])
        written = written or bool(piece)
    return ep.trajectory(source_index=source.index, chunk_size=ep.chunk_size, lag_k=lag_k)


def sft_trajectories(factory: EpisodeFactory, sources: Sequence[Source], lag_k: int) -> list[Trajectory]:
    return [sft_trajectory(factory, s, lag_k) for s in sources]


def _prefix_writes(factory: EpisodeFactory, source: Source, lag_k: int) -> list[tuple[int, str, str, bool]]:
    """Every non-empty piece of the pair as a prefix-layout write, in order: (source units read,
    the translation written before it, its text with the glue before it, whether it is the last)."""
    if source.reference is None:
        raise ValueError(f"source {source.index} has no reference")
    src_unit, tgt_unit = unit_of(source.src_lang), unit_of(source.tgt_lang)
    chunk_size = factory.chunk_size(source.src_lang)
    source_length = count_units(source.text, src_unit)
    pieces = reference_pieces(source.text, source.reference, src_unit, tgt_unit, chunk_size, lag_k)
    glue = "" if tgt_unit == "char" else " "
    out, written = [], ""
    for t, piece in enumerate(pieces, start=1):
        if not piece:
            continue
        text = (glue if written else "") + piece
        out.append((min(t * chunk_size, source_length), written, text, t == len(pieces)))
        written += text
    return out


def prefix_samples(factory: EpisodeFactory, source: Source, lag_k: int,
                   prompter: PrefixPrompter | None = None) -> list[tuple[list[int], list[int]]]:
    """Prefix-layout samples of one pair, one per write: ``(token_ids, action_mask)``.

    Sample t is ``prompter.prompt`` with the source read after step t and the translation so far,
    then piece t; loss on piece t only (plus the end of turn on the last write).
    """
    prompter = prompter or PrefixPrompter(factory.tokenizer)
    samples = []
    for read, written, text, last in _prefix_writes(factory, source, lag_k):
        context = prompter.prompt(source, read, factory.encode(written) if written else [])
        action = factory.encode(text) + ([factory.end_of_turn_id] if last else [])
        samples.append((context + action, [0] * len(context) + [1] * len(action)))
    return samples


@dataclass(frozen=True)
class PrefixSequence:
    """One pair in the prefix layout as a single sequence: ``token_ids`` = prompt + source +
    middle + target segments (``PrefixPrompter.segments``), ``lengths`` their token counts, and
    ``reads[i]`` the source tokens read when target token i is written (non-decreasing)."""

    token_ids: list[int]
    lengths: dict[str, int]
    reads: list[int]


def prefix_sequence(factory: EpisodeFactory, source: Source, lag_k: int,
                    prompter: PrefixPrompter | None = None) -> PrefixSequence:
    """The pair's pieces (the segmentation rule, as ``prefix_samples`` cuts them) as one sequence.

    A piece written after step t has read the first min(t·m, |X|) source units; in tokens, the
    encoding of that source prefix, which must be a prefix of the whole source's encoding (else
    ``ValueError``: the tokenizer merges across a word boundary, and no read count is exact).
    The end-of-turn token closes the target, written with the whole source read."""
    prompter = prompter or PrefixPrompter(factory.tokenizer)
    parts = prompter.segments(source, [])
    target, reads = [], []
    for read, _, text, _ in _prefix_writes(factory, source, lag_k):
        ids = factory.encode(text)
        target += ids
        reads += [prompter.read_tokens(source, read)] * len(ids)
    target.append(factory.end_of_turn_id)
    reads.append(len(parts["source"]))
    lengths = {k: len(v) for k, v in parts.items() if k != "target"} | {"target": len(target)}
    return PrefixSequence(parts["prompt"] + parts["source"] + parts["middle"] + target, lengths, reads)
