"""loop(generator, evaluator, max_rounds=N): draft, evaluate, revise; always capped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..contracts import AgentIdentity, Evaluation, LoopResult
from ..errors import ConfigurationError, ContractError
from ..handoff import annotation_problem
from ..runtime.context import RunContext
from ..step import Step

__all__ = ["Loop", "loop"]

GENERATOR_FILLED = ("previous_draft", "feedback")
EVALUATOR_FILLED = {"draft", "task", "round", "intent"}


class Loop(Step[Any, Any]):
    """Planner-generator-evaluator: the generator drafts, the evaluator judges.

    From round two on, the generator sees its previous draft and the feedback
    (in its prompt, and in ``previous_draft`` / ``feedback`` input fields when
    its input model declares them). The evaluator receives ``draft`` (and
    ``task``, ``round``, ``intent`` when declared). The result says whether a
    draft passed or the loop hit ``max_rounds``.
    """

    kind = "loop"

    def __init__(
        self,
        generator: Step[Any, Any],
        evaluator: Step[Any, Any],
        *,
        max_rounds: int,
        name: str = "loop",
    ) -> None:
        if not isinstance(max_rounds, int) or max_rounds < 1:
            raise ConfigurationError(
                f"loop() needs max_rounds >= 1, got {max_rounds!r}: there is no unbounded loop"
            )
        _check(generator, evaluator)
        self.generator = generator
        self.evaluator = evaluator
        self.max_rounds = max_rounds
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.input_type = generator.input_type
        self.output_type = LoopResult[generator.output_type]  # type: ignore[name-defined]
        fields = generator.input_type.model_fields
        self._gen_fills = [f for f in GENERATOR_FILLED if f in fields]
        self._eval_fills = EVALUATOR_FILLED & set(evaluator.input_type.model_fields)

    def children(self) -> tuple[Step[Any, Any], ...]:
        return (self.generator, self.evaluator)

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        evaluations: list[Evaluation] = []
        draft: BaseModel | None = None
        for round_no in range(1, self.max_rounds + 1):
            notes: tuple[str, ...] = ()
            gen_input = input
            if draft is not None:
                last = evaluations[-1]
                notes = (
                    f"Round {round_no} of {self.max_rounds}. Your previous draft:\n"
                    f"{draft.model_dump_json()}\nThe evaluator's feedback (score "
                    f"{last.score:.2f}):\n{last.feedback}\nRevise the draft to address "
                    "the feedback.",
                )
                if self._gen_fills:
                    values = {"previous_draft": draft, "feedback": last.feedback}
                    gen_input = input.model_copy(update={f: values[f] for f in self._gen_fills})
            draft = await ctx.run(
                self.generator, gen_input, label=f"{self.generator.name}[{round_no}]", notes=notes
            )
            available = {"draft": draft, "task": input, "round": round_no, "intent": ctx.intent}
            review = self.evaluator.input_type.model_validate(
                {k: available[k] for k in self._eval_fills}
            )
            evaluation: Evaluation = await ctx.run(
                self.evaluator, review, label=f"{self.evaluator.name}[{round_no}]"
            )
            evaluations.append(evaluation)
            if evaluation.passed:
                passed: BaseModel = self.output_type(
                    output=draft, passed=True, rounds=round_no, evaluations=evaluations
                )
                return passed
        ctx.record("loop.capped", max_rounds=self.max_rounds)
        capped: BaseModel = self.output_type(
            output=draft, passed=False, rounds=self.max_rounds, evaluations=evaluations
        )
        return capped


def _check(generator: Step[Any, Any], evaluator: Step[Any, Any]) -> None:
    problems: list[str] = []
    if not issubclass(evaluator.output_type, Evaluation):
        problems.append(f"evaluator output {evaluator.output_type.__name__} is not an Evaluation")
    fields = evaluator.input_type.model_fields
    if "draft" not in fields:
        problems.append(
            f"evaluator input {evaluator.input_type.__name__} has no 'draft' field "
            f"for the generator's {generator.output_type.__name__}"
        )
    else:
        problem = annotation_problem(generator.output_type, fields["draft"].annotation)
        if problem:
            problems.append(f"field 'draft': {problem}")
    if "task" in fields:
        problem = annotation_problem(generator.input_type, fields["task"].annotation)
        if problem:
            problems.append(f"field 'task': {problem}")
    for name, field in fields.items():
        if name not in EVALUATOR_FILLED and field.is_required():
            problems.append(f"evaluator input field {name!r} is required but nothing fills it")
    for name in GENERATOR_FILLED:
        field = generator.input_type.model_fields.get(name)
        if field is not None and field.is_required():
            problems.append(f"generator input field {name!r} must be optional (empty in round 1)")
    if problems:
        raise ContractError(
            f"loop: {generator.name!r} and {evaluator.name!r} do not fit",
            source=generator.name,
            target=evaluator.name,
            problems=problems,
        )


def loop(
    generator: Step[Any, Any], evaluator: Step[Any, Any], *, max_rounds: int, name: str = "loop"
) -> Step[Any, Any]:
    """Refine a draft until the evaluator passes it or ``max_rounds`` is reached."""
    return Loop(generator, evaluator, max_rounds=max_rounds, name=name)
