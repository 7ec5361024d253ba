"""route(): the decision journaled, contracts checked when built, unknown keys sent back,
the routed step under its own identity and scopes, typed outputs, exact replay."""

from __future__ import annotations

import enum
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import Message, ModelRequest, ModelResponse
from typedmesh.models.offline import SloppyModel
from typedmesh.patterns import Route, Routed, Router, UnknownRoute, route

# -- contracts --------------------------------------------------------------------------


class Ticket(BaseModel):
    customer_id: str
    order_id: str | None = None
    text: str


class Triage(BaseModel):
    category: str
    reason: str


class Refund(BaseModel):
    order_id: str | None
    text: str


class RefundDone(BaseModel):
    refund_id: str
    message: str


class Answer(BaseModel):
    message: str


class Reply(BaseModel):
    message: str


REFUNDED: list[str] = []


@tm.tool(requires={"orders:refund"}, idempotent=False)
def issue_refund(order_id: str) -> str:
    """Refund an order."""
    REFUNDED.append(order_id)
    return f"RF-{order_id}"


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    REFUNDED.clear()


def tool_answers(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "tool"]


def triage_model(*categories: str) -> tm.ScriptedModel:
    """Answers each request with the next category (the last one repeats)."""
    said = list(categories)

    def answer(request: ModelRequest) -> dict[str, Any]:
        category = said.pop(0) if len(said) > 1 else said[0]
        return {"category": category, "reason": "it says so"}

    return tm.ScriptedModel(answer)


def resolver_model(request: ModelRequest) -> dict[str, Any]:
    data = request.input_data()
    answers = tool_answers(request)
    if not answers:
        return {
            "tool_calls": [{"name": "issue_refund", "arguments": {"order_id": data["order_id"]}}]
        }
    if answers[-1].startswith("Error"):
        return {"refund_id": "", "message": answers[-1]}
    return {"refund_id": answers[-1], "message": "refunded"}


def faq_model(request: ModelRequest) -> dict[str, Any]:
    return {"message": f"see the help page on: {request.input_data()['text']}"}


def build(
    classifier_model: tm.Model, **options: Any
) -> tuple[Router, tm.Agent[Any, Any], tm.Agent[Any, Any], tm.Agent[Any, Any]]:
    classifier = tm.Agent(
        "triage", version="1.0.0", input=Ticket, output=Triage, model=classifier_model
    )
    resolver = tm.Agent(
        "resolver",
        version="2.1.0",
        deployment="eu-west",
        input=Refund,
        output=RefundDone,
        model=tm.ScriptedModel(resolver_model),
        tools=[issue_refund],
        scopes={"orders:refund"},
    )
    faq = tm.Agent(
        "faq", version="0.3.0", input=Refund, output=Answer, model=tm.ScriptedModel(faq_model)
    )
    options.setdefault("input", "both")
    flow = route(
        classifier,
        {"refund": resolver, "faq": faq},
        key=lambda d: d.category,
        **options,
    )
    assert isinstance(flow, Router)
    return flow, classifier, resolver, faq


TICKET = {"customer_id": "C-1", "order_id": "O-7", "text": "it broke"}


def events(result: tm.RunResult[Any], kind: str) -> list[dict[str, Any]]:
    return [e for n in result.trace.walk() for e in n.events if e["event"] == kind]


# -- the decision and the routed step ---------------------------------------------------


def test_the_decision_is_journaled_and_the_chosen_route_runs() -> None:
    flow, *_ = build(triage_model("refund"))
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)

    assert result.output.route == "refund"
    assert result.output.output == RefundDone(refund_id="RF-O-7", message="refunded")
    [decided] = events(result, "route.decided")
    assert decided["key"] == "refund" and decided["route"] == "resolver"
    assert decided["agent"] == {"name": "resolver", "version": "2.1.0", "deployment": "eu-west"}
    assert decided["classifier"] == "triage" and decided["attempts"] == 1
    # in the tamper-evident journal, on the router, after the classifier's own output
    stored = journal.read(result.run_id)
    kinds = [(e.type, e.path) for e in stored]
    at = kinds.index(("route.decided", "route"))
    assert kinds.index(("step.completed", "route/triage")) < at
    assert at < kinds.index(("step.started", "route/resolver"))
    assert tm.verify_run(journal, result.run_id).ok
    # the other route never ran
    assert [n.path for n in result.trace.walk()] == ["route", "route/triage", "route/resolver"]
    assert REFUNDED == ["O-7"]


def test_the_routed_step_is_a_child_node_under_its_own_identity() -> None:
    flow, *_ = build(triage_model("refund"))
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)
    node = result.trace.find("route/resolver")
    assert node is not None and node.kind == "agent"
    assert node.identity == tm.AgentIdentity(name="resolver", version="2.1.0", deployment="eu-west")
    assert node.usage.model_calls == 2 and node.usage.tool_calls == 1
    classifier = result.trace.find("route/triage")
    assert classifier is not None and classifier.usage.model_calls == 1
    assert classifier.usage.tool_calls == 0
    # every model and tool call of the resolver is journaled under its identity and path
    mine = [e for e in journal.read(result.run_id) if e.type in ("model.request", "tool.started")]
    by_agent = {(e.type, e.path, (e.agent or {}).get("name")) for e in mine}
    assert by_agent == {
        ("model.request", "route/triage", "triage"),
        ("model.request", "route/resolver", "resolver"),
        ("tool.started", "route/resolver", "resolver"),
    }
    tool = next(e for e in mine if e.type == "tool.started")
    assert tool.agent == {"name": "resolver", "version": "2.1.0", "deployment": "eu-west"}


def test_the_route_uses_its_own_scopes_not_the_classifiers() -> None:
    """The resolver holds orders:refund and refunds; the classifier does not and cannot."""
    greedy = tm.ScriptedModel(
        [
            {"tool_calls": [{"name": "issue_refund", "arguments": {"order_id": "O-7"}}]},
            {"category": "refund", "reason": "tried myself first"},
        ]
    )
    classifier = tm.Agent(
        "triage",
        input=Ticket,
        output=Triage,
        model=greedy,
        tools=[issue_refund],
        withheld_scopes={"orders:refund"},
    )
    _, _, resolver, faq = build(triage_model("refund"))
    flow = route(classifier, {"refund": resolver, "faq": faq}, key="category", input="both")
    result = tm.run(flow, TICKET)

    triage = result.trace.find("route/triage")
    assert triage is not None
    denied = [e for e in triage.events if e["event"] == "tool.denied"]
    assert denied == [
        {"event": "tool.denied", "tool": "issue_refund", "missing": ["orders:refund"]}
    ]
    assert "not allowed" in greedy.calls[1].messages[-1].content
    assert REFUNDED == ["O-7"]  # once: by the resolver, under its scope
    assert result.output.output.refund_id == "RF-O-7"


def test_a_grant_narrows_the_routed_steps_scopes_too() -> None:
    flow, *_ = build(triage_model("refund"))
    result = tm.run(flow, TICKET, grant=set())
    assert REFUNDED == []
    assert result.output.output.message.startswith("Error: not allowed")
    resolver = result.trace.find("route/resolver")
    assert resolver is not None
    assert [e["event"] for e in resolver.events] == ["tool.denied"]


def test_a_function_step_calling_the_resolver_is_the_workaround_route_replaces() -> None:
    """Today's workaround: the resolver's calls land under the caller's identity and scopes."""
    _, _, resolver, _ = build(triage_model("refund"))

    @tm.step(name="router")
    async def workaround(ticket: Refund, ctx: tm.RunContext) -> RefundDone:
        done: RefundDone = await resolver.invoke(ticket, ctx)
        return done

    result = tm.run(workaround, {"order_id": "O-7", "text": "x"})
    assert REFUNDED == []  # the resolver's scope was ignored: the router's (none) applied
    assert [n.name for n in result.trace.walk()] == ["router"]  # and no node of its own


# -- unknown keys -----------------------------------------------------------------------


def test_an_unknown_key_is_sent_back_to_the_classifier() -> None:
    model = triage_model("refunds", "refund")
    flow, *_ = build(model)
    result = tm.run(flow, TICKET)

    assert result.output.route == "refund"
    feedback = model.calls[1].messages[-1].content
    assert "'refunds', which names no route" in feedback
    assert "['faq', 'refund']" in feedback
    failed = events(result, "output.gate_failed")
    assert [e["problems"] for e in failed] == [
        ["the route key is 'refunds', which names no route; the routes are ['faq', 'refund']"]
    ]
    [decided] = events(result, "route.decided")
    assert decided["attempts"] == 2
    # the classifier was told the routes up front
    system = model.calls[0].messages[0].content
    assert "'refund' -> resolver" in system and "'faq' -> faq" in system


def test_a_classifier_that_never_names_a_route_fails_with_unknown_route() -> None:
    model = triage_model("nope")
    flow, *_ = build(model, max_attempts=2)
    with pytest.raises(UnknownRoute) as caught:
        tm.run(flow, TICKET)
    assert isinstance(caught.value, tm.GateError)
    assert caught.value.step == "triage"
    assert caught.value.problems == [
        "the route key is 'nope', which names no route; the routes are ['faq', 'refund']"
    ]
    assert caught.value.output == Triage(category="nope", reason="it says so")
    assert len(model.calls) == 2
    partial = caught.value.partial
    assert partial is not None and [n.path for n in partial.walk()] == ["route", "route/triage"]
    assert REFUNDED == []


def test_the_cap_defaults_to_the_classifiers_output_retries() -> None:
    model = triage_model("nope")
    flow, *_ = build(model)
    with pytest.raises(UnknownRoute):
        tm.run(flow, TICKET)
    assert len(model.calls) == 3  # output_retries=2: three tries


def test_a_function_classifier_naming_no_route_fails_at_once() -> None:
    @tm.step
    def classify(ticket: Ticket) -> Triage:
        return Triage(category="other", reason="rule")

    _, _, resolver, faq = build(triage_model("refund"))
    flow = route(classify, {"refund": resolver, "faq": faq}, key="category", input="both")
    with pytest.raises(UnknownRoute, match="'other', which names no route"):
        tm.run(flow, TICKET)


# -- build-time checks ------------------------------------------------------------------


def test_an_empty_routes_dict_is_a_configuration_error() -> None:
    _, classifier, *_ = build(triage_model("refund"))
    with pytest.raises(tm.ConfigurationError, match="at least one route"):
        route(classifier, {}, key="category")


def test_a_key_is_required_unless_the_classifier_returns_a_route() -> None:
    _, classifier, resolver, _ = build(triage_model("refund"))
    with pytest.raises(tm.ConfigurationError, match="give key="):
        route(classifier, {"refund": resolver}, input="both")
    with pytest.raises(tm.ContractError, match="'kind' is not a field"):
        route(classifier, {"refund": resolver}, key="kind", input="both")
    with pytest.raises(tm.ConfigurationError, match="a function or a field name"):
        route(classifier, {"refund": resolver}, key=3, input="both")  # type: ignore[call-overload]


def test_a_route_that_cannot_take_the_classifiers_output_is_refused_when_built() -> None:
    _, classifier, resolver, faq = build(triage_model("refund"))
    with pytest.raises(tm.ContractError) as caught:
        route(classifier, {"refund": resolver, "faq": faq}, key="category")
    assert "route 'refund' ('resolver', Refund) cannot accept the output of 'triage'" in str(
        caught.value
    )
    assert caught.value.target == "resolver"
    assert "missing field 'order_id' (str | None)" in caught.value.problems
    assert "missing field 'text' (str)" in caught.value.problems


def test_input_sources_are_checked_per_route() -> None:
    _, classifier, resolver, faq = build(triage_model("refund"))

    class Strict(BaseModel):
        order_id: str  # the request's order_id may be None

    strict = tm.Agent("strict", input=Strict, output=Answer, model=tm.ScriptedModel([]))
    with pytest.raises(tm.ContractError) as caught:
        route(classifier, {"refund": strict}, key="category", input="request")
    assert caught.value.problems == ["field 'order_id': gives NoneType, wants str"]
    assert "the router's input (Ticket)" in str(caught.value)

    # a per-route mapping: each route declares where its input comes from
    flow = Router(
        classifier,
        {"refund": resolver, "faq": faq},
        key="category",
        input={"refund": "both", "faq": "request"},
    )
    assert flow.sources == {"refund": "both", "faq": "request"}
    with pytest.raises(
        tm.ConfigurationError, match="names routes that do not exist: \\['billing'\\]"
    ):
        route(classifier, {"refund": resolver}, key="category", input={"billing": "request"})
    with pytest.raises(tm.ConfigurationError, match="must be one of"):
        route(classifier, {"refund": resolver}, key="category", input="everything")  # type: ignore[call-overload]


def test_both_takes_a_field_from_the_decision_first_then_the_request() -> None:
    class Decision(BaseModel):
        category: str
        text: str  # the classifier's rewording wins over the request's text

    class Both(BaseModel):
        text: str
        order_id: str | None
        category: str

    seen: list[Both] = []

    @tm.step
    def classify(ticket: Ticket) -> Decision:
        return Decision(category="refund", text=f"summary of: {ticket.text}")

    @tm.step
    def handle(both: Both) -> Answer:
        seen.append(both)
        return Answer(message="ok")

    tm.run(route(classify, {"refund": handle}, key="category", input="both"), TICKET)
    assert seen == [Both(text="summary of: it broke", order_id="O-7", category="refund")]


class Kind(enum.Enum):
    REFUND = "refund"
    FAQ = "faq"


def test_a_key_fields_listed_values_must_match_the_routes() -> None:
    class Closed(BaseModel):
        category: Literal["refund", "faq", "billing"]

    class ByEnum(BaseModel):
        category: Kind

    @tm.step
    def closed(ticket: Ticket) -> Closed:
        return Closed(category="refund")

    @tm.step
    def by_enum(ticket: Ticket) -> ByEnum:
        return ByEnum(category=Kind.FAQ)

    _, _, resolver, faq = build(triage_model("refund"))
    with pytest.raises(tm.ContractError) as caught:
        route(closed, {"refund": resolver, "faq": faq}, key="category", input="request")
    assert caught.value.problems == ["'category' may be 'billing', which names no route"]
    with pytest.raises(tm.ContractError) as caught:
        route(
            closed,
            {"refund": resolver, "faq": faq, "billing": faq, "spam": faq},
            key="category",
            input="request",
        )
    assert caught.value.problems == [
        "route 'spam' can never be chosen: 'category' is one of ['refund', 'faq', 'billing']"
    ]
    # an Enum key: its values name the routes; the router reads the value
    flow = route(by_enum, {"refund": resolver, "faq": faq}, key="category", input="request")
    result = tm.run(flow, TICKET)
    assert result.output.route == "faq"
    flow = route(
        by_enum, {"refund": resolver, "faq": faq}, key=lambda d: d.category, input="request"
    )
    assert tm.run(flow, TICKET).output.route == "faq"


# -- a typed Route output ---------------------------------------------------------------


class Triaged(Route):
    route: Literal["refund", "faq"]
    reason: str


def test_a_route_typed_output_needs_no_key_and_its_literal_is_checked() -> None:
    classifier = tm.Agent(
        "triage",
        input=Ticket,
        output=Triaged,
        model=tm.ScriptedModel([Triaged(route="faq", reason="question")]),
    )
    _, _, resolver, faq = build(triage_model("refund"))
    flow = Router(classifier, {"refund": resolver, "faq": faq}, input="request")
    assert flow.key_field == "route"
    result = tm.run(flow, TICKET)
    assert result.output.route == "faq"
    assert result.output.output == Answer(message="see the help page on: it broke")
    # the classifier's schema already lists the routes
    schema = classifier.output_schema
    assert schema["properties"]["route"]["enum"] == ["refund", "faq"]
    with pytest.raises(tm.ContractError, match="names no route"):
        route(classifier, {"refund": resolver}, input="request")


# -- output types -----------------------------------------------------------------------


def test_the_default_output_is_routed_validated_by_its_key() -> None:
    class A(BaseModel):
        x: str

    class B(BaseModel):
        x: str  # the same shape: only the key can tell them apart

    @tm.step
    def classify(ticket: Ticket) -> Triage:
        return Triage(category="b", reason="")

    @tm.step
    def to_a(ticket: Ticket) -> A:
        return A(x="a")

    @tm.step
    def to_b(ticket: Ticket) -> B:
        return B(x="b")

    flow = route(classify, {"a": to_a, "b": to_b}, key="category", input="request")
    assert issubclass(flow.output_type, Routed)
    assert flow.output_type.model_fields["output"].annotation == A | B
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)
    assert type(result.output.output) is B
    again = flow.output_type.model_validate_json(result.output.model_dump_json())
    assert type(again.output) is B
    replayed = tm.replay(result.run_id, flow, journal=journal)
    assert replayed.identical and type(replayed.output.output) is B
    with pytest.raises(ValueError):
        flow.output_type.model_validate({"route": "c", "output": {"x": "c"}})


def test_a_declared_common_output_is_checked_and_converted() -> None:
    flow, *_ = build(triage_model("faq"), output=Reply)
    assert flow.output_type is Reply
    result = tm.run(flow, TICKET)
    assert result.output == Reply(message="see the help page on: it broke")

    class Strict(BaseModel):
        message: str
        refund_id: str

    with pytest.raises(tm.ContractError) as caught:
        build(triage_model("faq"), output=Strict)
    assert "route 'faq' ('faq') returns Answer, which does not convert" in str(caught.value)
    assert caught.value.problems == ["missing field 'refund_id' (str)"]


def test_a_router_nests_in_a_sequence() -> None:
    flow, classifier, resolver, faq = build(triage_model("refund"), output=Reply)

    @tm.step
    def shout(reply: Reply) -> Reply:
        return Reply(message=reply.message.upper())

    chain = tm.sequential(flow, shout, name="desk")
    assert list(chain.walk()) == [chain, flow, classifier, resolver, faq, shout]
    result = tm.run(chain, TICKET)
    assert result.output == Reply(message="REFUNDED")
    assert result.trace.find("desk/route/resolver") is not None


# -- replay and resume ------------------------------------------------------------------


class Exploding:
    name = "exploding"
    provider = "offline"

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a replay called a model")


def test_replay_is_exact_and_makes_no_call() -> None:
    flow, classifier, resolver, faq = build(triage_model("refunds", "refund"))
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)
    for agent in (classifier, resolver, faq):
        agent._model = Exploding()
    replayed = tm.replay(result.run_id, flow, journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert replayed.output == result.output
    assert REFUNDED == ["O-7"]  # the refund was served, not repeated
    decided = [e for n in replayed.trace.walk() for e in n.events if e["event"] == "route.decided"]
    assert decided == events(result, "route.decided")


def test_replay_with_another_decision_is_non_determinism() -> None:
    flow, *_ = build(triage_model("refund"))
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)
    rerouted, *_ = build(triage_model("refund"))
    rerouted.routes = {"refund": rerouted.routes["faq"], "faq": rerouted.routes["refund"]}
    with pytest.raises(tm.NonDeterminismError):
        tm.replay(result.run_id, rerouted, journal=journal)


def test_a_what_if_swaps_the_classifier_and_the_other_route_runs_live() -> None:
    flow, classifier, *_ = build(triage_model("refund"))
    journal = tm.MemoryJournal()
    result = tm.run(flow, TICKET, journal=journal)
    assert result.output.route == "refund"
    other = classifier.with_model(triage_model("faq"))
    whatif = tm.replay(result.run_id, flow, journal=journal, swap={"triage": other})
    assert whatif.output.route == "faq"
    assert not whatif.identical
    assert REFUNDED == ["O-7"]


def test_resume_after_the_route_failed_does_not_ask_the_classifier_again(tmp_path: Any) -> None:
    calls: list[str] = []

    def flaky(request: ModelRequest) -> Any:
        calls.append("faq")
        if len(calls) == 1:
            return tm.ModelError("provider down")
        return {"message": "fine"}

    flow, classifier, _, faq = build(triage_model("faq"))
    faq._model = tm.ScriptedModel(flaky)
    db = tmp_path / "runs.db"
    with pytest.raises(tm.ModelError) as caught:
        tm.run(flow, TICKET, journal=db)
    classifier._model = Exploding()
    resumed = tm.resume(caught.value.run_id or "", flow, journal=db)
    assert resumed.output.route == "faq"
    assert resumed.output.output == Answer(message="fine")


def test_description_and_children() -> None:
    flow, classifier, resolver, faq = build(triage_model("refund"))
    assert flow.children() == (classifier, resolver, faq)
    assert flow.kind == "route" and flow.input_type is Ticket
    shared = route(classifier, {"refund": resolver, "faq": resolver}, key="category", input="both")
    assert shared.children() == (classifier, resolver)
    assert "Router" in repr(flow)
    assert json.loads(json.dumps(flow.briefing()))  # plain text


# -- the example ------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "triage_route.py"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/triage_route.py, imported fresh (offline: TYPEDMESH_MODEL unset)."""
    monkeypatch.delenv("TYPEDMESH_MODEL", raising=False)
    return load_example()


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typedmesh_example_triage_route", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its models' annotations resolve in its namespace
    spec.loader.exec_module(module)
    return module


class NoProse:
    """Hands the wrapped model each request with the system prompt blanked."""

    def __init__(self, inner: tm.Model) -> None:
        self.inner = inner
        self.name = inner.name
        self.provider = inner.provider

    async def generate(self, request: ModelRequest) -> ModelResponse:
        messages = [
            Message(role="system", content="") if m.role == "system" else m
            for m in request.messages
        ]
        return await self.inner.generate(request.model_copy(update={"messages": messages}))


def rewire(module: ModuleType, wrap: Callable[[tm.Model], tm.Model]) -> None:
    for step in module.flow.walk():
        if isinstance(step, tm.Agent):
            step._model = wrap(step.model)


def test_the_example_refunds_through_the_refund_agent_only(example: ModuleType) -> None:
    journal = tm.MemoryJournal()
    result = tm.run(example.flow, example.example_input, journal=journal)
    assert result.output.route == "refund"
    assert result.output.output.refund_id == "RF-0001"
    assert [n.path for n in result.trace.walk()] == [
        "triage_desk",
        "triage_desk/triage",
        "triage_desk/refunds",
    ]
    refunds = result.trace.find("triage_desk/refunds")
    assert refunds is not None and refunds.identity is not None
    assert refunds.identity.version == "2.0.0" and refunds.usage.tool_calls == 2
    [refund] = [e for e in journal.read(result.run_id) if e.type == "tool.started"][1:]
    assert refund.payload["tool"] == "issue_refund" and refund.agent is not None
    assert refund.agent["name"] == "refunds"
    # the refund agent saw the ids and the reason, never the ticket's text
    case = example.refunds.model.calls[0].input_data()
    assert case == {
        "customer_id": "C-311",
        "order_id": "ORD-1042",
        "reason": "asks for a refund ('money back') on an order",
    }
    other = tm.run(example.flow, example.other_input)
    assert other.output.route == "faq" and other.output.output.article == "help/shipping"
    assert len(example.REFUNDS) == 1


def test_the_example_replays_from_its_journal_alone(example: ModuleType) -> None:
    journal = tm.MemoryJournal()
    result = tm.run(example.flow, example.example_input, journal=journal)
    rewire(example, lambda m: Exploding())
    replayed = tm.replay(result.run_id, example.flow, journal=journal)
    assert replayed.identical and replayed.executed == 0


@pytest.mark.parametrize("wrap", ["sloppy", "no prose"])
def test_the_example_runs_the_same_on_a_sloppy_model_and_without_prose(wrap: str) -> None:
    clean = tm.run((m := load_example()).flow, m.example_input, run_id="r")
    clean_other = tm.run(m.flow, m.other_input, run_id="r2")
    changed = load_example()
    if wrap == "sloppy":
        rewire(changed, lambda model: SloppyModel(model, seed=7))
    else:
        rewire(changed, NoProse)
    again = tm.run(changed.flow, changed.example_input, run_id="r")
    again_other = tm.run(changed.flow, changed.other_input, run_id="r2")
    assert again.output.model_dump() == clean.output.model_dump()
    assert again_other.output.model_dump() == clean_other.output.model_dump()
    assert again.usage.model_calls == clean.usage.model_calls
    bad = [
        e
        for n in again.trace.walk()
        for e in n.events
        if e["event"] in ("output.invalid", "output.gate_failed")
    ]
    assert bad == []


def test_the_example_main_prints_the_routes_and_cost(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    example.main()
    out = capsys.readouterr().out
    assert "routed to 'refund': refunds@2.0.0" in out
    assert "routed to 'faq': faq@0.9.0" in out
    cost = re.search(r"^cost: \$(\d+\.\d{6})", out, re.M)
    assert cost is not None and float(cost.group(1)) > 0
    assert re.search(r"^usage: \d+ model calls", out, re.M)


def test_typedmesh_model_switches_every_agent_of_the_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TYPEDMESH_MODEL", "openai:gpt-4o-mini")
    module = load_example()
    agents = [s for s in module.flow.walk() if isinstance(s, tm.Agent)]
    assert [a.name for a in agents] == ["triage", "refunds", "faq"]
    assert all(a.model_spec == "openai:gpt-4o-mini" for a in agents)


# -- docs/routing.md --------------------------------------------------------------------


def test_the_docs_examples_print_what_the_docs_say(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "routing.md").read_text()
    blocks = re.findall(
        r"^```python\n(.*?)^```\n\nIts output[^\n]*\n\n```text\n(.*?)^```", doc, re.S | re.M
    )
    assert len(blocks) == 2
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for code, shown in blocks:  # the second block continues the first
        exec(compile(code, "docs/routing.md", "exec"), namespace)
        assert capsys.readouterr().out == shown


def test_a_resume_whose_recorded_decision_names_no_route_is_unknown_route(tmp_path: Path) -> None:
    def down(request: ModelRequest) -> Any:
        return tm.ModelError("provider down")

    flow, classifier, resolver, faq = build(triage_model("faq"))
    faq._model = tm.ScriptedModel(down)
    db = tmp_path / "runs.db"
    with pytest.raises(tm.ModelError) as caught:
        tm.run(flow, TICKET, journal=db)
    changed = route(classifier, {"refund": resolver}, key="category", input="both")
    with pytest.raises(UnknownRoute, match="recorded decision names no route"):
        tm.resume(caught.value.run_id or "", changed, journal=db)
