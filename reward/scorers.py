"""Sentence-level quality scorers, chosen by name from ``QUALITY_SCORERS``.

- ``chrf``: sacrebleu sentence chrF (chrF2, character 6-grams), 0-100. β=2 weights recall
  twice as much as precision, so extra text costs little: kept for comparability with
  published chrF numbers.
- ``chrf1``: the same with β=1 (precision and recall weighted equally): extra text costs as
  much as missing text; 0-100.
- ``chrf_bp``: chrF2 times a length penalty on long outputs, exp(1 − |hyp|/|ref|) when
  |hyp| > |ref| (BLEU's brevity penalty turned round), lengths in non-whitespace characters
  (``reward.text_metrics.long_output_penalty``): chrF2 up to the reference length; 0-100.
- ``bleu``: sacrebleu sentence BLEU as sacrebleu recommends for single sentences: effective
  n-gram order (orders longer than the hypothesis are left out, so short sentences do not
  collapse to 0) with its default ``exp`` smoothing (a zero n-gram count is replaced by a
  geometrically shrinking one, Chen & Cherry's method 3); tokenizer ``zh`` for character-unit
  (Chinese) targets, else ``13a``; 0-100. Its brevity penalty punishes short outputs and its
  precisions long ones.
- ``comet``: an ``unbabel-comet`` model from a local checkpoint directory
  (``DIR/checkpoints/model.ckpt`` next to ``DIR/hparams.yaml``), a ``.ckpt`` file, or a hub
  id fetched with ``comet.download_model`` where a hub is reachable. Scored in batches
  (``model.predict``), never one sample at a time. ``comet`` is imported only when this
  scorer is built: it lives in ``.venv-comet`` (DESIGN §4).

Every scorer has ``info`` (:class:`reward.types.ScorerInfo`: name, checkpoint, signature and
the top of its scale), which travels with every score it produces.
"""
from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from reward.text_metrics import bleu_tokenizer, sentence_chrf, sentence_chrf_bp
from reward.types import QualityItem, RewardSettings, ScorerInfo

if TYPE_CHECKING:
    from sacrebleu.metrics import BLEU


class QualityScorer(Protocol):
    """Scores many items in one call; higher is better."""

    info: ScorerInfo

    def score(self, items: Sequence[QualityItem]) -> list[float]: ...


def _sacrebleu_version() -> str:
    import sacrebleu

    return sacrebleu.__version__


class ChrfScorer:
    """Sentence chrF2, identical to ``sacrebleu.metrics.CHRF().sentence_score``."""

    def __init__(self) -> None:
        self.info = ScorerInfo("chrf", None, f"chrF2|nc:6|nw:0|version:{_sacrebleu_version()}", scale=100.0)

    def score(self, items: Sequence[QualityItem]) -> list[float]:
        return [sentence_chrf(it.hypothesis, it.reference) for it in items]


class Chrf1Scorer:
    """Sentence chrF1, identical to ``sacrebleu.metrics.CHRF(beta=1).sentence_score``."""

    def __init__(self) -> None:
        self.info = ScorerInfo("chrf1", None, f"chrF1|nc:6|nw:0|version:{_sacrebleu_version()}", scale=100.0)

    def score(self, items: Sequence[QualityItem]) -> list[float]:
        return [sentence_chrf(it.hypothesis, it.reference, beta=1) for it in items]


class ChrfBpScorer:
    """Sentence chrF2 times exp(1 − |hyp|/|ref|) (characters) for a hypothesis longer than its reference."""

    def __init__(self) -> None:
        self.info = ScorerInfo("chrf_bp", None,
                               f"chrF2|nc:6|nw:0|lp:exp(1-hyp/ref) if hyp>ref, chars|version:{_sacrebleu_version()}",
                               scale=100.0)

    def score(self, items: Sequence[QualityItem]) -> list[float]:
        return [sentence_chrf_bp(it.hypothesis, it.reference) for it in items]


@lru_cache(maxsize=4)
def _bleu(tokenize: str) -> "BLEU":
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, effective_order=True, smooth_method="exp")


class BleuScorer:
    """Sentence BLEU (effective order, exp smoothing); the tokenizer follows each item's target
    unit (``zh`` for characters)."""

    def __init__(self) -> None:
        self.info = ScorerInfo("bleu", None,
                               f"BLEU|eff:yes|smooth:exp|tok:13a or zh|version:{_sacrebleu_version()}",
                               scale=100.0)

    def score(self, items: Sequence[QualityItem]) -> list[float]:
        return [float(_bleu(bleu_tokenizer(it.unit)).sentence_score(it.hypothesis, [it.reference]).score)
                for it in items]


def _quiet_lightning() -> None:
    # model.predict builds a Lightning Trainer per call; its banners would flood the logs.
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "comet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")


def resolve_comet_checkpoint(model: str) -> str:
    """A local directory or ``.ckpt`` file as is; otherwise a hub id downloaded by comet."""
    path = Path(model).expanduser()
    if path.is_dir():
        ckpt = path / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"COMET checkpoint directory {path} has no checkpoints/model.ckpt")
        return str(ckpt.resolve())
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise FileNotFoundError(f"COMET checkpoint {path} not found")
        return str(path.resolve())
    from comet import download_model

    try:
        return str(download_model(model))
    except Exception as exc:  # comet reports every failure as KeyError "not supported"
        raise RuntimeError(
            f"COMET model {model!r} is not a local checkpoint directory and could not be "
            f"downloaded ({exc}); on a machine without a model hub pass a local directory "
            f"holding hparams.yaml and checkpoints/model.ckpt") from None


class CometScorer:
    """A COMET model scoring (src, mt, ref) triples in batches of ``batch_size``."""

    def __init__(self, model: str, batch_size: int = 32, device: str = "cpu") -> None:
        # torchmetrics (imported by comet) warns about pkg_resources on every import.
        warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
        from comet import load_from_checkpoint

        _quiet_lightning()  # after the import: pytorch_lightning sets its level when imported

        self.checkpoint = resolve_comet_checkpoint(model)
        self.batch_size = batch_size
        self.gpus = 1 if device == "cuda" else 0
        self.model = load_from_checkpoint(self.checkpoint, local_files_only=not _hub_id(model))
        self.info = ScorerInfo("comet", self.checkpoint, f"comet|model:{model}|batch:{batch_size}", scale=1.0)

    def score(self, items: Sequence[QualityItem]) -> list[float]:
        if not items:
            return []
        samples = [{"src": it.source, "mt": it.hypothesis, "ref": it.reference} for it in items]
        # num_workers=0: no DataLoader subprocesses inside a Ray actor.
        out = self.model.predict(samples, batch_size=self.batch_size, gpus=self.gpus,
                                 progress_bar=False, num_workers=0)
        return [float(s) for s in out.scores]


def _hub_id(model: str) -> bool:
    path = Path(model).expanduser()
    return not (path.is_dir() or path.suffix == ".ckpt")


QUALITY_SCORERS: dict[str, Callable[[RewardSettings], QualityScorer]] = {
    "chrf": lambda s: ChrfScorer(),
    "chrf1": lambda s: Chrf1Scorer(),
    "chrf_bp": lambda s: ChrfBpScorer(),
    "bleu": lambda s: BleuScorer(),
    "comet": lambda s: CometScorer(_require(s.comet_model), s.comet_batch_size, s.device),
}


def _require(model: str | None) -> str:
    if not model:
        raise ValueError("quality scorer 'comet' needs reward.comet_model (a checkpoint directory or hub id)")
    return model


def build_scorer(settings: RewardSettings) -> QualityScorer:
    """The scorer named by ``settings.quality``."""
    try:
        factory = QUALITY_SCORERS[settings.quality]
    except KeyError:
        raise ValueError(f"unknown quality scorer {settings.quality!r}; "
                         f"expected one of {', '.join(QUALITY_SCORERS)}") from None
    return factory(settings)
