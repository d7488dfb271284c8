"""Where every actor runs: one placement plan from the config, checked against the cluster.

``build_plan`` is a pure function of the config: placement groups of bundles for the rollout
engines (``tensor_parallel_size`` GPUs per engine, one bundle per GPU), the reward replicas and
the learner ranks, either ``disaggregate`` (each role its own bundles) or ``colocate`` (learner
rank i and a slice of a rollout engine share bundle i). ``fit_problems`` compares a plan with
``ray.cluster_resources()`` and the nodes' resources, naming the config keys behind each number.
``reserve`` creates the groups and waits for them with a timeout; it never waits forever.

A role that reserves nothing (0 CPUs, 0 GPUs, no custom resources: the tiny CPU defaults) gets
no bundle: Ray places it anywhere and it uses no reserved capacity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestration.errors import UserInputError


@dataclass
class Slot:
    """Where one actor goes: a group and bundle indices (none = not placed), and what it asks for."""

    group: str | None
    bundles: list[int]
    num_cpus: float
    num_gpus: float
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class GroupPlan:
    name: str
    bundles: list[dict[str, float]]
    strategy: str


@dataclass
class PlacementPlan:
    """Groups to reserve and the slot of every actor; ``demands`` say which keys asked for what."""

    groups: list[GroupPlan]
    rollout: list[Slot]
    reward: list[Slot]
    learner: list[Slot]
    demands: list[tuple[str, str, float]]   # (resource, "which config keys", amount)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in self.groups:
            for b in g.bundles:
                for k, v in b.items():
                    out[k] = out.get(k, 0.0) + v
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"groups": [{"name": g.name, "strategy": g.strategy, "bundles": g.bundles} for g in self.groups],
                "totals": self.totals()}


def _bundle(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    b = {"CPU": cpus, "GPU": gpus, **custom}
    return {k: float(v) for k, v in b.items() if v > 0}


def _fmt(x: float) -> str:
    return f"{x:g}"


def build_plan(cfg) -> PlacementPlan:
    """The placement plan of a training config (``RootConfig``); no Ray needed."""
    ro, rw, le, rc = cfg.rollout, cfg.reward, cfg.learner, cfg.ray
    tp = ro.engine.tensor_parallel_size
    engine_gpus = ro.num_gpus_per_worker
    groups: list[GroupPlan] = []
    demands: list[tuple[str, str, float]] = []
    rollout: list[Slot] = []
    learner: list[Slot] = []

    def add_demand(resource: str, keys: str, amount: float) -> None:
        if amount > 0:
            demands.append((resource, keys, amount))

    if rc.placement == "colocate":
        n = le.num_ranks
        per_gpu = engine_gpus / tp if engine_gpus else 0.0
        bundle = _bundle(le.num_cpus_per_rank + ro.num_cpus_per_worker / tp,
                         le.num_gpus_per_rank + per_gpu, {**rc.learner_resources, **rc.rollout_resources})
        placed = bool(bundle)
        if placed:
            groups.append(GroupPlan("colocated", [dict(bundle) for _ in range(n)], "PACK"))
        for i in range(n):
            learner.append(Slot("colocated" if placed else None, [i] if placed else [],
                                le.num_cpus_per_rank, le.num_gpus_per_rank))
        for j in range(ro.num_workers):
            idx = list(range(j * tp, (j + 1) * tp))
            rollout.append(_engine_slot("colocated" if placed else None, idx if placed else [],
                                        ro.num_cpus_per_worker, engine_gpus, tp))
        add_demand("CPU", "learner.num_ranks × (learner.num_cpus_per_rank + rollout.num_cpus_per_worker / "
                          "rollout.engine.tensor_parallel_size) [colocate]", bundle.get("CPU", 0.0) * n)
        add_demand("GPU", "learner.num_ranks × (learner.num_gpus_per_rank + rollout.num_gpus_per_worker / "
                          "rollout.engine.tensor_parallel_size) [colocate]", bundle.get("GPU", 0.0) * n)
    else:
        # rollout: one bundle per GPU of an engine, the engine's CPUs on its first bundle
        for j in range(ro.num_workers):
            if tp > 1:
                bundles = [_bundle(ro.num_cpus_per_worker if k == 0 else 0.0, engine_gpus / tp,
                                   rc.rollout_resources) for k in range(tp)]
                bundles = [b or {"CPU": 0.001} for b in bundles]
                groups.append(GroupPlan(f"rollout-{j}", bundles, "STRICT_PACK"))   # TP stays on one node
                rollout.append(_engine_slot(f"rollout-{j}", list(range(tp)), ro.num_cpus_per_worker, engine_gpus, tp))
            else:
                rollout.append(Slot(None, [], ro.num_cpus_per_worker, engine_gpus))
        single = _bundle(ro.num_cpus_per_worker, engine_gpus, rc.rollout_resources)
        if tp == 1 and single:
            groups.append(GroupPlan("rollout", [dict(single) for _ in range(ro.num_workers)], "PACK"))
            for j, s in enumerate(rollout):
                s.group, s.bundles = "rollout", [j]
        lb = _bundle(le.num_cpus_per_rank, le.num_gpus_per_rank, rc.learner_resources)
        if lb:
            groups.append(GroupPlan("learner", [dict(lb) for _ in range(le.num_ranks)], "PACK"))
        learner = [Slot("learner" if lb else None, [i] if lb else [], le.num_cpus_per_rank, le.num_gpus_per_rank)
                   for i in range(le.num_ranks)]
        add_demand("CPU", "rollout.num_workers × rollout.num_cpus_per_worker", ro.num_workers * ro.num_cpus_per_worker)
        add_demand("GPU", "rollout.num_workers × rollout.num_gpus_per_worker", ro.num_workers * engine_gpus)
        add_demand("CPU", "learner.num_ranks × learner.num_cpus_per_rank", le.num_ranks * le.num_cpus_per_rank)
        add_demand("GPU", "learner.num_ranks × learner.num_gpus_per_rank", le.num_ranks * le.num_gpus_per_rank)
        for k, v in rc.rollout_resources.items():
            add_demand(k, "rollout.num_workers × ray.rollout_resources", v * ro.num_workers * tp)
        for k, v in rc.learner_resources.items():
            add_demand(k, "learner.num_ranks × ray.learner_resources", v * le.num_ranks)

    reward_gpus = 1.0 if rw.device == "cuda" else 0.0
    rb = _bundle(rw.num_cpus, reward_gpus, rc.reward_resources)
    if rb:
        groups.append(GroupPlan("reward", [dict(rb) for _ in range(rw.replicas)], "PACK"))
    reward = [Slot("reward" if rb else None, [i] if rb else [], rw.num_cpus, reward_gpus) for i in range(rw.replicas)]
    add_demand("CPU", "reward.replicas × reward.num_cpus", rw.replicas * rw.num_cpus)
    add_demand("GPU", "reward.replicas × 1 (reward.device=cuda)", rw.replicas * reward_gpus)
    for k, v in rc.reward_resources.items():
        add_demand(k, "reward.replicas × ray.reward_resources", v * rw.replicas)
    return PlacementPlan(groups, rollout, reward, learner, demands)


def _engine_slot(group: str | None, bundles: list[int], cpus: float, gpus: float, tp: int) -> Slot:
    """A tensor-parallel engine's actor reserves no GPU itself: vLLM's Ray workers take one
    bundle each (``VLLM_RAY_BUNDLE_INDICES``), ``gpus / tp`` of a GPU apiece."""
    if tp == 1:
        return Slot(group, bundles, cpus, gpus)
    env = {"VLLM_RAY_PER_WORKER_GPUS": _fmt(gpus / tp)}
    if bundles:
        env["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, bundles))
    return Slot(group, bundles, cpus, 0.0, env)


def fit_problems(plan: PlacementPlan, cluster: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """What of ``plan`` this cluster cannot hold (empty: it fits). ``cluster`` is
    ``ray.cluster_resources()``, ``nodes`` the resources of each alive node."""
    problems = []
    for resource, asked in sorted(plan.totals().items()):
        have = float(cluster.get(resource, 0.0))
        if asked > have + 1e-9:
            parts = "; ".join(f"{keys} = {_fmt(n)}" for r, keys, n in plan.demands if r == resource)
            problems.append(f"{resource}: the config asks for {_fmt(asked)}, the cluster has {_fmt(have)} "
                            f"({parts})")
    if problems:
        return problems
    for g in plan.groups:
        if g.strategy == "STRICT_PACK":
            need = {k: sum(b.get(k, 0.0) for b in g.bundles) for b in g.bundles for k in b}
            if not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items()) for n in nodes):
                problems.append(f"{g.name}: one engine needs {need} on one node "
                                "(rollout.engine.tensor_parallel_size × rollout.num_gpus_per_worker / "
                                f"tensor_parallel_size); the largest node has "
                                f"{max((n.get('GPU', 0.0) for n in nodes), default=0):g} GPU")
        for b in g.bundles:
            if not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for n in nodes):
                problems.append(f"{g.name}: a bundle {b} fits on no single node")
                break
    return problems


def check_cluster(plan: PlacementPlan, timeout_s: float = 60.0) -> None:
    """Raise ``UserInputError`` (exit 2) naming keys and numbers when the cluster cannot hold ``plan``."""
    import ray

    cluster = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    problems = fit_problems(plan, cluster, nodes)
    if problems:
        raise UserInputError("the Ray cluster cannot hold this config; lower these or add nodes:\n  "
                             + "\n  ".join(problems))


@dataclass
class Reserved:
    """Created placement groups by name, and the Ray options of each actor's slot."""

    groups: dict[str, Any]

    def options(self, slot: Slot) -> dict[str, Any]:
        """``.options(...)`` for an actor in ``slot`` (its resources and scheduling strategy)."""
        opts: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
        if slot.group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.groups[slot.group], placement_group_bundle_index=slot.bundles[0],
                # a tensor-parallel engine's vLLM workers go into the same group
                placement_group_capture_child_tasks=len(slot.bundles) > 1)
        if slot.env:
            opts["runtime_env"] = {"env_vars": dict(slot.env)}
        return opts

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - already gone at shutdown
                pass
        self.groups = {}


def reserve(plan: PlacementPlan, timeout_s: float) -> Reserved:
    """Create every placement group of ``plan`` and wait until all are placed (at most ``timeout_s``)."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group

    check_cluster(plan)
    created = {g.name: placement_group(g.bundles, strategy=g.strategy, name="") for g in plan.groups}
    reserved = Reserved(created)
    try:
        ray.get([pg.ready() for pg in created.values()], timeout=timeout_s)
    except GetTimeoutError:
        waiting = [name for name, pg in created.items() if not _ready(pg)]
        reserved.remove()
        raise UserInputError(
            f"placement groups {waiting} were not placed within ray.start_timeout_s={_fmt(timeout_s)} s: the "
            f"cluster has the resources in total ({plan.totals()}) but not free, or not on one node; "
            "free them (other jobs?) or lower the requests") from None
    return reserved


def _ready(pg) -> bool:
    import ray

    try:
        ray.get(pg.ready(), timeout=0.1)
        return True
    except Exception:  # noqa: BLE001 - not ready
        return False


def actor_nodes() -> dict[str, list[str]]:
    """Node id of every live actor, by class name (from the GCS actor table; empty if unavailable)."""
    try:
        from ray._private.state import state

        table = state.actor_table(None)
    except Exception:  # noqa: BLE001 - a private API: report nothing rather than fail a run
        return {}
    out: dict[str, list[str]] = {}
    for info in table.values():
        if info.get("State") == "ALIVE":
            out.setdefault(info.get("ActorClassName", "?"), []).append(info.get("Address", {}).get("NodeID", "?"))
    return {k: sorted(v) for k, v in out.items()}


def describe(plan: PlacementPlan) -> dict[str, Any]:
    """The plan, the cluster's nodes and where each kind of actor runs (``placement.json``)."""
    import ray

    nodes = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}
    return {**plan.as_dict(), "nodes": nodes, "actors": actor_nodes()}
