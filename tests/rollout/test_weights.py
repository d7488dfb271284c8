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
