"""orchestrate(planner, workers=[...], synthesizer=s): a typed plan, then its execution.

The planner returns a ``Plan``; a plan naming an unknown worker, giving a
worker an input its model rejects, or holding a cycle is sent back to the
planner with the problems (at most ``max_plan_attempts`` tries). Independent
plan steps run concurrently, dependent ones in order; the plan is recorded on
the trace and returned with the result: it is the audit trail. With an
expensive planner model over cheap worker models this is plan-and-execute.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ..contracts import AgentIdentity, Plan, PlanExecution, PlanStep, WorkerResult
from ..errors import ConfigurationError, ContractError, PlanRejected
from ..handoff import handoff_problems, validate_input
from ..models.base import ContextNote, RequestContext, WorkerInfo
from ..runtime.context import RunContext
from ..step import Gate, Step

__all__ = ["Orchestrate", "orchestrate"]

SYNTHESIZER_FILLED = {"task", "intent"}


class Orchestrate(Step[Any, Any]):
    """Orchestrator-worker: plan, run the plan's steps on workers, synthesize."""

    kind = "orchestrate"

    def __init__(
        self,
        planner: Step[Any, Any],
        *,
        workers: Sequence[Step[Any, Any]],
        synthesizer: Step[Any, Any],
        max_plan_attempts: int = 3,
        name: str = "orchestrate",
    ) -> None:
        if not issubclass(planner.output_type, Plan):
            raise ContractError(
                f"orchestrate: planner {planner.name!r} must return a Plan, "
                f"not {planner.output_type.__name__}",
                source=planner.name,
                target="orchestrate",
            )
        if not workers:
            raise ConfigurationError("orchestrate() needs at least one worker")
        self.workers = {w.name: w for w in workers}
        if len(self.workers) != len(workers):
            raise ConfigurationError("orchestrate(): worker names must be unique")
        if max_plan_attempts < 1:
            raise ConfigurationError("orchestrate(): max_plan_attempts must be >= 1")
        problems = handoff_problems(
            PlanExecution, synthesizer.input_type, filled=SYNTHESIZER_FILLED
        )
        if problems:
            raise ContractError(
                f"orchestrate: synthesizer {synthesizer.name!r} must accept a PlanExecution",
                source="plan",
                target=synthesizer.name,
                problems=problems,
            )
        self.planner = planner
        self.synthesizer = synthesizer
        self.max_plan_attempts = max_plan_attempts
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.input_type = planner.input_type
        self.output_type = Orchestrated_of(synthesizer.output_type)
        self._synth_fills = SYNTHESIZER_FILLED & set(synthesizer.input_type.model_fields)

    def children(self) -> tuple[Step[Any, Any], ...]:
        return (self.planner, *self.workers.values(), self.synthesizer)

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        budget = ctx.budget
        max_steps = budget.max_plan_steps if budget is not None else None

        def check(plan: Plan) -> list[str]:
            problems = self.plan_problems(plan)
            if max_steps is not None and len(plan.steps) > max_steps:
                problems.append(
                    f"the plan has {len(plan.steps)} steps; the run's budget allows at most "
                    f"{max_steps}: plan fewer, larger steps"
                )
            return problems

        gate = Gate(
            check=check,
            guidance=ContextNote(self.briefing(), RequestContext(workers=self.catalog())),
            error=PlanRejected,
            max_attempts=self.max_plan_attempts,
        )
        plan: Plan = await ctx.run(self.planner, input, gate=gate)
        # counted from the planner's journaled gate failures (resumed runs included)
        planner_node = ctx.node.find(f"{ctx.path}/{self.planner.name}")
        events = planner_node.events if planner_node is not None else []
        attempts = 1 + sum(e["event"] == "output.gate_failed" for e in events)
        ctx.record("plan", plan=plan.model_dump(mode="json"), attempts=attempts)
        outputs = await self._execute(plan, ctx)
        results = [
            WorkerResult(
                step_id=s.id, worker=s.worker, output=outputs[s.id].model_dump(mode="json")
            )
            for s in plan.steps
        ]
        data: dict[str, Any] = {"plan": plan, "results": results}
        if "task" in self._synth_fills:
            data["task"] = input
        if "intent" in self._synth_fills:
            data["intent"] = ctx.intent
        synthesis = await ctx.run(
            self.synthesizer,
            validate_input(
                self.synthesizer.input_type, data, source="plan", target=self.synthesizer.name
            ),
        )
        result: BaseModel = self.output_type(
            output=synthesis, plan=plan, results=results, plan_attempts=attempts
        )
        return result

    async def _execute(self, plan: Plan, ctx: RunContext) -> dict[str, BaseModel]:
        done: dict[str, BaseModel] = {}
        finished = {s.id: asyncio.Event() for s in plan.steps}

        async def run_step(planned: PlanStep) -> None:
            for dep in planned.depends_on:
                await finished[dep].wait()
            worker = self.workers[planned.worker]
            data = {k: _resolve(v, done) for k, v in planned.input.items()}
            worker_input = validate_input(
                worker.input_type, data, source=f"plan step {planned.id!r}", target=worker.name
            )
            done[planned.id] = await ctx.run(
                worker, worker_input, label=f"{worker.name}[{planned.id}]"
            )
            finished[planned.id].set()

        await ctx.run_all([functools.partial(run_step, planned) for planned in plan.steps])
        return done

    def catalog(self) -> list[WorkerInfo]:
        """The workers as data (``ModelRequest.context.workers`` of the planner)."""
        return [
            WorkerInfo(
                name=w.name,
                description=w.description,
                input_schema=w.input_type.model_json_schema(),
                output_fields=list(w.output_type.model_fields),
            )
            for w in self.workers.values()
        ]

    def briefing(self) -> str:
        """What the planner is told: the workers, their input schemas, the rules."""
        lines = [
            "Plan the work as a Plan: each step has a unique 'id', a 'worker' from the "
            "list below, an 'input' object matching that worker's input schema, and "
            "'depends_on' (ids of steps that must finish first). Steps without "
            'dependencies run in parallel. An input value {"$ref": "STEP_ID"} or '
            '{"$ref": "STEP_ID.FIELD"} passes an earlier step\'s output; the step '
            "must be in depends_on.",
            "Workers:",
        ]
        for worker in self.workers.values():
            schema = json.dumps(worker.input_type.model_json_schema(), separators=(",", ":"))
            outputs = ", ".join(worker.output_type.model_fields)
            about = f" {worker.description}" if worker.description else ""
            lines.append(f"- {worker.name}:{about} input schema {schema}; output fields: {outputs}")
        return "\n".join(lines)

    def plan_problems(self, plan: Plan) -> list[str]:
        """Everything wrong with a plan; empty when it can run."""
        problems: list[str] = []
        ids = [s.id for s in plan.steps]
        if not plan.steps:
            problems.append("the plan has no steps")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            problems.append(f"duplicate step ids: {dupes}")
        by_id = {s.id: s for s in plan.steps}
        for s in plan.steps:
            worker = self.workers.get(s.worker)
            if worker is None:
                problems.append(
                    f"step {s.id!r} names unknown worker {s.worker!r}; "
                    f"workers are {sorted(self.workers)}"
                )
            for dep in s.depends_on:
                if dep not in by_id:
                    problems.append(f"step {s.id!r} depends on unknown step {dep!r}")
            if worker is not None:
                problems += self._input_problems(s, worker, by_id)
        cycle = _find_cycle(plan.steps)
        if cycle:
            problems.append("the plan has a cycle: " + " -> ".join(cycle))
        return problems

    def _input_problems(
        self, s: PlanStep, worker: Step[Any, Any], by_id: dict[str, PlanStep]
    ) -> list[str]:
        problems: list[str] = []
        refs = {k: v["$ref"] for k, v in s.input.items() if _is_ref(v)}
        for field_name, ref in refs.items():
            target, _, attr = str(ref).partition(".")
            if target not in s.depends_on:
                problems.append(
                    f"step {s.id!r} input {field_name!r} refers to {target!r}, "
                    "which is not in its depends_on"
                )
            elif attr and target in by_id and by_id[target].worker in self.workers:
                source = self.workers[by_id[target].worker].output_type
                if attr not in source.model_fields:
                    problems.append(
                        f"step {s.id!r} input {field_name!r} refers to unknown "
                        f"field {attr!r} of {source.__name__}"
                    )
        try:
            worker.input_type.model_validate({k: v for k, v in s.input.items() if k not in refs})
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in e["loc"])
                if e["type"] == "missing" and e["loc"][0] in refs:
                    continue
                problems.append(
                    f"step {s.id!r} input for {worker.name!r} at {loc or '(root)'}: {e['msg']}"
                )
        return problems


def Orchestrated_of(output_type: type[BaseModel]) -> type[BaseModel]:
    from ..contracts import Orchestrated

    return Orchestrated[output_type]  # type: ignore[valid-type]


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$ref"}


def _resolve(value: Any, done: dict[str, BaseModel]) -> Any:
    if not _is_ref(value):
        return value
    target, _, attr = str(value["$ref"]).partition(".")
    output = done[target]
    data = output.model_dump(mode="json")  # plain data: the worker validates its own types
    return data[attr] if attr else data


def _find_cycle(steps: list[PlanStep]) -> list[str]:
    graph = {s.id: [d for d in s.depends_on] for s in steps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep in graph and dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def orchestrate(
    planner: Step[Any, Any],
    *,
    workers: Sequence[Step[Any, Any]],
    synthesizer: Step[Any, Any],
    max_plan_attempts: int = 3,
    name: str = "orchestrate",
) -> Step[Any, Any]:
    """Plan with ``planner``, execute on ``workers``, combine with ``synthesizer``."""
    return Orchestrate(
        planner,
        workers=workers,
        synthesizer=synthesizer,
        max_plan_attempts=max_plan_attempts,
        name=name,
    )
