"""SimulEval 1.1.4's own evaluator drives our wait-k decoder through the agent adapter: its
instances (prediction, delays, source length) equal the ones our decoder writes."""
from __future__ import annotations

import json

import pytest
import torch

from orchestration.eval.simuleval_agent import run_simuleval
from rollout.hf_backend import HFBackend
from rollout.prefix_layout import PrefixPrompter, run_prefix_policy
from rollout.types import Source
from rollout.simul_policies import WaitKPolicy

DE = ["Die Katze sitzt auf der Matte und schaut aus dem Fenster.",
      "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.", "Wir übersetzen den Satz."]
EN = ["The government announced new traffic rules on Monday.",
      "We translate the sentence while the speaker is still talking."]


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("src_lang,tgt_lang,unit,sources,k", [
    ("de", "en", "word", DE, 2), ("de", "en", "word", DE, 4), ("en", "zh", "char", EN, 3)])
def test_simuleval_instances_equal_ours(tmp_path, tiny_model_dir, one_thread, src_lang, tgt_lang, unit,
                                        sources, k):
    backend = HFBackend(str(tiny_model_dir), dtype="float32")
    srcs = [Source(i, s, src_lang, tgt_lang, "x y z") for i, s in enumerate(sources)]
    ours, _ = run_prefix_policy(backend, PrefixPrompter(backend.tokenizer), WaitKPolicy(k), srcs,
                                max_new_tokens_final=12)
    log = run_simuleval(str(tiny_model_dir), k, sources, ["x y z"] * len(sources), tmp_path,
                        src_lang=src_lang, tgt_lang=tgt_lang, latency_unit=unit, max_new_tokens_final=12)
    theirs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [t["index"] for t in theirs] == list(range(len(sources)))
    for o, t in zip(ours, theirs):
        assert o.delays and t["delays"] == o.delays
        assert t["source_length"] == o.source_length
        # SimulEval's char unit joins characters without the spaces between Latin words
        want = o.prediction.replace(" ", "") if unit == "char" else o.prediction
        assert t["prediction"] == want
