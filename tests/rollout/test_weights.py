from rollout.weights import expand_packed


def test_packed_siblings_travel_together():
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.up_proj.weight",
             "model.norm.weight"]
    assert expand_packed(names) == sorted([
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.3.mlp.up_proj.weight",
        "model.layers.3.mlp.gate_proj.weight", "model.norm.weight"])
    assert expand_packed(["model.layers.0.self_attn.q_proj.bias"]) == sorted(
        f"model.layers.0.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj"))


def test_buckets_are_bounded_aligned_and_keep_order():
    from rollout.weights import ALIGN, plan_buckets

    layout = [("a", "float32", [3]), ("b", "bfloat16", [5, 2]), ("c", "float32", [100]), ("d", "float32", [1])]
    buckets = plan_buckets(layout, max_bytes=96)
    names = [[t[0] for t in b["tensors"]] for b in buckets]
    assert names == [["a", "b"], ["c"], ["d"]]           # c (400 bytes) travels alone
    a, b = buckets[0]["tensors"]
    assert (a[3], a[4]) == (0, 12) and (b[3], b[4]) == (ALIGN, 20) and buckets[0]["size"] == ALIGN + 20
    assert all(t[3] % ALIGN == 0 for bk in buckets for t in bk["tensors"])
    assert sum(t[4] for bk in buckets for t in bk["tensors"]) == 12 + 20 + 400 + 4
