"""Where a run's money went: by pattern node, by agent, by model, and what it saved.

A pure function of a reduced run: the trace tree and the model calls that
``TraceReducer`` keeps (``cost_report(root, calls)``; ``reducer_cost`` and
``run_cost`` feed it a reducer or a journaled run). Nothing is read from the
events here; the reducer stays the one place usage is derived.

Money is counted in integer pico-dollars (``pusd``, 1e-12 USD). Each model
call's recorded cost (a float, priced when the call was made) becomes one
integer, and every view is a sum of those integers, so the node tree, the
agents, the models and the run's total add up exactly, whatever the order.
List prices per million tokens with up to six decimals price every call
exactly at that unit, so re-pricing tokens at another model is exact too.

Three views, one set of calls:

- nodes: the pattern tree, each node with what it spent itself (``own``) and
  with everything under it (``total``);
- agents: each agent identity (``name@version``) that spent anything;
- models: each model name, with how it was priced (``offline, priced as
  gpt-4o``: an offline double named after a real model; ``unpriced``: no
  price was known, so its tokens cost nothing in the sums).

And two comparisons, made from the same token counts:

- plan-and-execute, for each ``orchestrate`` node: what it cost, against every
  call of its workers and synthesizer priced at the planner's model (the
  model of the planner's last call: the one whose plan was accepted);
- cascades, for each agent served by a ``tm.Cascade``: answers, escalated
  answers (the escalation rate), and the cost against every one of its calls
  priced at the cascade's top model. Each accepted answer is journaled
  (``cascade.answered``, naming the models), so a cascade that never had to
  escalate is listed too, with its full saving.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

from ..models.pricing import PRICES, price_of
from .trace import EffectCall, TraceNode

if TYPE_CHECKING:
    from ..journal.base import Journal
    from .reducer import TraceReducer

__all__ = [
    "PUSD_PER_USD",
    "CallCost",
    "CascadeCost",
    "CostReport",
    "ModelCost",
    "NodeCost",
    "PlanAndExecute",
    "RoleCost",
    "Spend",
    "call_costs",
    "cost_report",
    "format_usd",
    "places_of",
    "priced_as",
    "reducer_cost",
    "reprice",
    "run_cost",
    "to_pusd",
]

PUSD_PER_USD = 10**12
"""Pico-dollars per dollar: the unit every sum here is counted in."""

UNNAMED = "(unnamed)"


def to_pusd(usd: float) -> int:
    """A recorded dollar amount in pico-dollars (float noise below 1e-12 USD rounds away)."""
    exact = Decimal(repr(float(usd))) * PUSD_PER_USD
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def usd(pusd: int) -> Decimal:
    """Pico-dollars as an exact decimal number of dollars."""
    return Decimal(pusd).scaleb(-12)


def places_of(*amounts: int) -> int:
    """The decimals that show every amount (pico-dollars) exactly: at least six."""
    needed = 6
    for amount in amounts:
        digits = f"{abs(amount):013d}"[-12:].rstrip("0")
        needed = max(needed, len(digits))
    return needed


def format_usd(pusd: int, places: int | None = None) -> str:
    """``$0.003245``: exact, with ``places`` decimals (default: as many as it needs, >= 6)."""
    places = places_of(pusd) if places is None else max(places, places_of(pusd))
    sign = "-" if pusd < 0 else ""
    return f"{sign}${usd(abs(pusd)):.{places}f}"


def priced_as(model: str) -> str | None:
    """The price-table entry a model name is priced as (as ``price_of`` finds it), or None."""
    name = model.partition(":")[2] if ":" in model else model
    if name in PRICES:
        return name
    return max((k for k in PRICES if name.startswith(k)), key=len, default=None)


def reprice(model: str, input_tokens: int, output_tokens: int) -> int | None:
    """What these tokens cost at ``model``'s price, in pico-dollars; None when it has none."""
    price = price_of(model)
    if price is None:
        return None
    per_in = Decimal(repr(float(price.input_per_mtok))) * 10**6  # pusd per token
    per_out = Decimal(repr(float(price.output_per_mtok))) * 10**6
    exact = per_in * input_tokens + per_out * output_tokens
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _percent(part: int, whole: int) -> Decimal | None:
    return None if whole <= 0 else Decimal(part * 100) / Decimal(whole)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Spend:
    """Calls, tokens and cost, additive (``a + b`` sums every counter)."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    cost_pusd: int = 0
    unpriced_calls: int = 0
    """Model calls whose model had no price: their tokens are counted, their cost is 0."""

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.model_calls + other.model_calls,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.tool_calls + other.tool_calls,
            self.cost_pusd + other.cost_pusd,
            self.unpriced_calls + other.unpriced_calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_usd(self) -> Decimal:
        return usd(self.cost_pusd)

    @property
    def spent(self) -> bool:
        return bool(self.model_calls or self.tool_calls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_calls": self.model_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tool_calls": self.tool_calls,
            "cost_usd": float(self.cost_usd),
            "cost_pusd": self.cost_pusd,
            "unpriced_calls": self.unpriced_calls,
        }


def _sum(spends: Iterable[Spend]) -> Spend:
    total = Spend()
    for spend in spends:
        total = total + spend
    return total


@dataclass(frozen=True, slots=True)
class CallCost:
    """One model call's recorded usage, in the units of this module."""

    path: str
    """The path of the trace node that made it."""
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cost_pusd: int
    priced: bool = True
    """False: it used tokens, recorded no cost, and its model has no price."""

    @property
    def spend(self) -> Spend:
        return Spend(
            model_calls=1,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_pusd=self.cost_pusd,
            unpriced_calls=0 if self.priced else 1,
        )


@dataclass(slots=True)
class NodeCost:
    """One node of the pattern tree: what it spent itself, and with everything under it."""

    name: str
    kind: str
    path: str
    agent: str
    """``name@version`` of its identity (its name when it has none)."""
    models: list[str]
    own: Spend
    total: Spend
    children: list[NodeCost] = field(default_factory=list)

    def walk(self) -> Iterator[NodeCost]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "agent": self.agent,
            "models": self.models,
            "own": self.own.to_dict(),
            "total": self.total.to_dict(),
            "children": [c.to_dict() for c in self.children],
        }


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One model name's calls, and how they were priced."""

    model: str
    providers: tuple[str, ...]
    spend: Spend
    priced_as: str | None
    """The price-table entry its name matches (None: no list price)."""

    @property
    def offline(self) -> bool:
        return "offline" in self.providers

    @property
    def pricing(self) -> str:
        """``offline, priced as gpt-4o``, ``priced as gpt-4o``, ``unpriced``, ..."""
        if self.priced_as is None:
            if self.spend.cost_pusd == 0:
                return "offline, unpriced" if self.offline else "unpriced"
            return "price given at run time"
        if self.offline:
            return f"offline, priced as {self.priced_as}"
        return f"priced as {self.priced_as}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spend.to_dict(),
            "providers": list(self.providers),
            "priced_as": self.priced_as,
            "pricing": self.pricing,
        }


@dataclass(frozen=True, slots=True)
class RoleCost:
    """One child of an ``orchestrate`` node: what it cost, and on the planner's model."""

    role: str
    """``planner``, ``worker`` or ``synthesizer``."""
    node: str
    models: tuple[str, ...]
    spend: Spend
    on_planner_pusd: int | None
    """Its calls priced at the planner's model (the planner's own: as recorded)."""

    def to_dict(self) -> dict[str, Any]:
        on_planner = self.on_planner_pusd
        return {
            "role": self.role,
            "node": self.node,
            "models": list(self.models),
            **self.spend.to_dict(),
            "on_planner_usd": None if on_planner is None else float(usd(on_planner)),
            "on_planner_pusd": on_planner,
        }


@dataclass(frozen=True, slots=True)
class PlanAndExecute:
    """An ``orchestrate`` node's cost against its planner's model doing every call."""

    path: str
    planner_model: str
    actual_pusd: int
    all_on_planner_pusd: int | None
    """None when the planner's model has no price."""
    roles: tuple[RoleCost, ...]

    @property
    def saved_pusd(self) -> int | None:
        if self.all_on_planner_pusd is None:
            return None
        return self.all_on_planner_pusd - self.actual_pusd

    @property
    def saving_pct(self) -> Decimal | None:
        saved = self.saved_pusd
        return None if saved is None else _percent(saved, self.all_on_planner_pusd or 0)

    def to_dict(self) -> dict[str, Any]:
        hypothetical = self.all_on_planner_pusd
        return {
            "path": self.path,
            "planner_model": self.planner_model,
            "actual_usd": float(usd(self.actual_pusd)),
            "actual_pusd": self.actual_pusd,
            "all_on_planner_usd": None if hypothetical is None else float(usd(hypothetical)),
            "all_on_planner_pusd": hypothetical,
            "saved_pusd": self.saved_pusd,
            "saving_pct": _float(self.saving_pct),
            "roles": [r.to_dict() for r in self.roles],
        }


@dataclass(frozen=True, slots=True)
class CascadeCost:
    """One agent's cascade: how often it escalated, and what the cheap first tries saved."""

    agent: str
    models: tuple[str, ...]
    """The cascade's models, cheapest first."""
    answers: int
    """Invocations of the agent (each ends in one answer, or fails)."""
    escalated_answers: int
    escalations: int
    reasons: dict[str, int]
    spend: Spend
    all_on_top_pusd: int | None
    """Every one of its calls priced at the top model (None: that model has no price)."""

    @property
    def top_model(self) -> str:
        return self.models[-1]

    @property
    def escalation_rate(self) -> float:
        return self.escalated_answers / self.answers if self.answers else 0.0

    @property
    def saved_pusd(self) -> int | None:
        if self.all_on_top_pusd is None:
            return None
        return self.all_on_top_pusd - self.spend.cost_pusd

    @property
    def saving_pct(self) -> Decimal | None:
        saved = self.saved_pusd
        return None if saved is None else _percent(saved, self.all_on_top_pusd or 0)

    def to_dict(self) -> dict[str, Any]:
        top = self.all_on_top_pusd
        return {
            "agent": self.agent,
            "models": list(self.models),
            "top_model": self.top_model,
            "answers": self.answers,
            "escalated_answers": self.escalated_answers,
            "escalations": self.escalations,
            "escalation_rate": self.escalation_rate,
            "reasons": dict(self.reasons),
            **self.spend.to_dict(),
            "all_on_top_usd": None if top is None else float(usd(top)),
            "all_on_top_pusd": top,
            "saved_pusd": self.saved_pusd,
            "saving_pct": _float(self.saving_pct),
        }


@dataclass(frozen=True, slots=True)
class CostReport:
    """A run's cost, attributed three ways that add up exactly, and its comparisons."""

    run_id: str
    root: NodeCost
    calls: tuple[CallCost, ...]
    by_agent: dict[str, Spend]
    agent_models: dict[str, list[str]]
    by_model: dict[str, ModelCost]
    plans: tuple[PlanAndExecute, ...] = ()
    cascades: tuple[CascadeCost, ...] = ()

    @property
    def total(self) -> Spend:
        """The run's total: every call once, and every tool call."""
        return self.root.total

    def sums(self) -> dict[str, int]:
        """The total in pico-dollars as each view adds it up."""
        return {
            "calls": sum(c.cost_pusd for c in self.calls),
            "nodes": sum(n.own.cost_pusd for n in self.root.walk()),
            "agents": sum(s.cost_pusd for s in self.by_agent.values()),
            "models": sum(m.spend.cost_pusd for m in self.by_model.values()),
            "total": self.total.cost_pusd,
        }

    def places(self) -> int:
        """Decimals that show every amount of the report exactly (>= 6): one column width."""
        amounts = [n.own.cost_pusd for n in self.root.walk()]
        amounts += [n.total.cost_pusd for n in self.root.walk()]
        amounts += [s.cost_pusd for s in self.by_agent.values()]
        amounts += [m.spend.cost_pusd for m in self.by_model.values()]
        for plan in self.plans:
            amounts += [plan.actual_pusd, plan.all_on_planner_pusd or 0, plan.saved_pusd or 0]
            amounts += [r.on_planner_pusd or 0 for r in plan.roles]
        for cascade in self.cascades:
            amounts += [cascade.all_on_top_pusd or 0, cascade.saved_pusd or 0]
        return places_of(*amounts)

    @property
    def exact(self) -> bool:
        """Whether every view adds up to the run's total, to the pico-dollar."""
        return len(set(self.sums().values())) == 1

    def to_dict(self, views: Iterable[str] = ("node", "agent", "model")) -> dict[str, Any]:
        wanted = set(views)
        document: dict[str, Any] = {
            "run_id": self.run_id,
            "unit": "cost_pusd: integer pico-dollars (1e-12 USD); cost_usd: the same, in USD",
            "total": self.total.to_dict(),
            "sums": {**self.sums(), "exact": self.exact},
        }
        if "node" in wanted:
            document["nodes"] = self.root.to_dict()
        if "agent" in wanted:
            document["agents"] = {
                agent: {**spend.to_dict(), "models": self.agent_models.get(agent, [])}
                for agent, spend in self.by_agent.items()
            }
        if "model" in wanted:
            document["models"] = {name: m.to_dict() for name, m in self.by_model.items()}
        document["plan_and_execute"] = [p.to_dict() for p in self.plans]
        document["cascades"] = [c.to_dict() for c in self.cascades]
        return document


# -- building it ------------------------------------------------------------------------


def _agent_of(node: TraceNode) -> str:
    identity = node.identity
    return f"{identity.name}@{identity.version}" if identity is not None else node.name


def call_costs(calls: Iterable[EffectCall], root: TraceNode | None = None) -> list[CallCost]:
    """Every model call that recorded usage (billed failures too), in the order made."""
    found: list[CallCost] = []
    for call in calls:
        usage = call.usage
        if call.kind != "model" or usage is None:
            continue
        model = call.model or call.served_model or UNNAMED
        cost = to_pusd(usage.cost_usd)
        tokens = usage.input_tokens + usage.output_tokens
        node = call.node if call.node is not None else root
        found.append(
            CallCost(
                path=node.path if node is not None else call.path,
                model=model,
                provider=call.provider,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_pusd=cost,
                priced=not (cost == 0 and tokens > 0 and price_of(model) is None),
            )
        )
    return found


def _residual(node: TraceNode, counted: Sequence[CallCost]) -> CallCost | None:
    """Usage the node counted that no call carries (a response with no call open)."""
    usage = node.usage
    if usage.model_calls <= len(counted):
        return None
    model = node.models[-1] if node.models else UNNAMED
    cost = max(0, to_pusd(usage.cost_usd) - sum(c.cost_pusd for c in counted))
    in_tokens = max(0, usage.input_tokens - sum(c.input_tokens for c in counted))
    out_tokens = max(0, usage.output_tokens - sum(c.output_tokens for c in counted))
    unpriced = cost == 0 and in_tokens + out_tokens > 0 and price_of(model) is None
    return CallCost(node.path, model, "", in_tokens, out_tokens, cost, priced=not unpriced)


def cost_report(
    root: TraceNode, calls: Iterable[EffectCall | CallCost], run_id: str = ""
) -> CostReport:
    """Attribute a run's model calls to its trace tree, agents and models; compare.

    ``calls`` are the reducer's (``TraceReducer.calls``; tool calls are skipped)
    or ``CallCost`` records whose ``path`` names a node of ``root``. A call
    whose path is no node's counts on its nearest ancestor that is one.
    """
    given = list(calls)
    records = call_costs((c for c in given if isinstance(c, EffectCall)), root)
    records += [c for c in given if isinstance(c, CallCost)]
    nodes = {node.path: node for node in root.walk()}

    def owner(path: str) -> str:
        while path and path not in nodes:
            path = path.rpartition("/")[0]
        return path or root.path

    by_node: dict[str, list[CallCost]] = {}
    for record in records:
        by_node.setdefault(owner(record.path), []).append(record)
    for path, node in nodes.items():  # usage the reducer counted with no call to show for it
        extra = _residual(node, by_node.get(path, []))
        if extra is not None:
            by_node.setdefault(path, []).append(extra)
            records.append(extra)

    def build(node: TraceNode) -> NodeCost:
        mine = by_node.get(node.path, [])
        own = _sum(c.spend for c in mine) + Spend(tool_calls=node.usage.tool_calls)
        children = [build(child) for child in node.children]
        models = list(dict.fromkeys([*node.models, *(c.model for c in mine)]))
        total = _sum([own, *(c.total for c in children)])
        return NodeCost(
            node.name, node.kind, node.path, _agent_of(node), models, own, total, children
        )

    tree = build(root)
    by_agent: dict[str, Spend] = {}
    agent_models: dict[str, list[str]] = {}
    for item in tree.walk():
        if item.own.spent:
            by_agent[item.agent] = by_agent.get(item.agent, Spend()) + item.own
            known = agent_models.setdefault(item.agent, [])
            known.extend(m for m in item.models if m not in known)
    by_model: dict[str, ModelCost] = {}
    for name in sorted({c.model for c in records}):
        mine = [c for c in records if c.model == name]
        providers = tuple(sorted({c.provider for c in mine if c.provider}))
        by_model[name] = ModelCost(name, providers, _sum(c.spend for c in mine), priced_as(name))
    return CostReport(
        run_id=run_id,
        root=tree,
        calls=tuple(records),
        by_agent=by_agent,
        agent_models=agent_models,
        by_model=by_model,
        plans=tuple(_plans(root, tree, by_node)),
        cascades=tuple(_cascades(root, tree, by_node)),
    )


def _subtree_calls(node: TraceNode, by_node: dict[str, list[CallCost]]) -> list[CallCost]:
    return [c for n in node.walk() for c in by_node.get(n.path, [])]


def _priced_at(model: str, calls: Iterable[CallCost]) -> int | None:
    total = 0
    for call in calls:
        cost = reprice(model, call.input_tokens, call.output_tokens)
        if cost is None:
            return None
        total += cost
    return total


def _plans(
    root: TraceNode, tree: NodeCost, by_node: dict[str, list[CallCost]]
) -> Iterator[PlanAndExecute]:
    """One comparison per ``orchestrate`` node whose planner called a model."""
    costs = {n.path: n for n in tree.walk()}
    for node in root.walk():
        if node.kind != "orchestrate" or not node.children:
            continue
        plans = [e["plan"] for e in node.events if e.get("event") == "plan"]
        steps = plans[-1].get("steps", []) if plans and isinstance(plans[-1], dict) else []
        workers = {f"{s.get('worker')}[{s.get('id')}]" for s in steps if isinstance(s, dict)}
        planner = node.children[0]  # started first: the plan comes before anything else
        planner_calls = _subtree_calls(planner, by_node)
        if not planner_calls:
            continue
        model = planner_calls[-1].model  # the call whose plan was accepted
        roles: list[RoleCost] = []
        hypothetical: int | None = sum(c.cost_pusd for c in by_node.get(node.path, []))
        for child in node.children:
            role = (
                "planner"
                if child is planner
                else "worker"
                if child.name in workers
                else "synthesizer"
            )
            calls = _subtree_calls(child, by_node)
            spent = costs[child.path].total
            priced = spent.cost_pusd if child is planner else _priced_at(model, calls)
            models = tuple(dict.fromkeys(c.model for c in calls))
            roles.append(RoleCost(role, child.name, models, spent, priced))
            hypothetical = None if hypothetical is None or priced is None else hypothetical + priced
        yield PlanAndExecute(
            node.path, model, costs[node.path].total.cost_pusd, hypothetical, tuple(roles)
        )


def _chain(edges: list[tuple[str, str]]) -> tuple[str, ...]:
    """A cascade's models, cheapest first, from its escalations (from, to)."""
    after = dict(edges)
    targets = {to for _, to in edges}
    start = next((frm for frm, _ in edges if frm not in targets), edges[0][0])
    chain = [start]
    while chain[-1] in after and after[chain[-1]] not in chain:
        chain.append(after[chain[-1]])
    if edges[-1][1] not in chain:  # the models disagree: the last escalation names the top
        chain.append(edges[-1][1])
    return tuple(chain)


_CASCADE_EVENTS = frozenset({"cascade.answered", "model.escalated"})


def _cascades(
    root: TraceNode, tree: NodeCost, by_node: dict[str, list[CallCost]]
) -> Iterator[CascadeCost]:
    """One entry per agent with a cascade that answered or escalated in the run.

    ``cascade.answered`` (one per accepted answer) names the cascade's models;
    a journal from before it existed shows only escalations (``model.escalated``),
    and the models are pieced together from them."""
    agents = {n.path: n.agent for n in tree.walk()}
    seen: dict[str, list[TraceNode]] = {}
    for node in root.walk():
        if any(e.get("event") in _CASCADE_EVENTS for e in node.events):
            seen.setdefault(agents[node.path], []).append(node)
    for agent, nodes in seen.items():
        answers = [n for n in root.walk() if agents[n.path] == agent and by_node.get(n.path)]
        marked = [n for n in nodes if any(e.get("event") == "model.escalated" for e in n.events)]
        events = [e for n in marked for e in n.events if e.get("event") == "model.escalated"]
        edges = [(str(e.get("from_model", "")), str(e.get("to_model", ""))) for e in events]
        named = next(
            (
                tuple(str(m) for m in e["models"])
                for n in nodes
                for e in n.events
                if e.get("event") == "cascade.answered" and e.get("models")
            ),
            None,
        )
        models = named or _chain(edges)
        calls = [c for n in answers for c in by_node.get(n.path, [])]
        yield CascadeCost(
            agent=agent,
            models=models,
            answers=len(answers),
            escalated_answers=len(marked),
            escalations=len(events),
            reasons=dict(Counter(str(e.get("reason", "")) for e in events)),
            spend=_sum(c.spend for c in calls),
            all_on_top_pusd=_priced_at(models[-1], calls),
        )


def reducer_cost(reducer: TraceReducer) -> CostReport:
    """The cost report of what a reducer has folded (finish it first for a whole run)."""
    if reducer.root is None:
        raise ValueError("the reducer has seen no run")
    return cost_report(reducer.root, reducer.calls, reducer.run_id)


def run_cost(journal: Journal, run_id: str) -> CostReport:
    """The cost report of a journaled run (raises ``RunNotFound`` for an unknown id)."""
    from .reducer import reduce_events

    events = journal.read(run_id)
    reducer = reduce_events(events, journal)
    reducer.finish(events[-1])
    return reducer_cost(reducer)
