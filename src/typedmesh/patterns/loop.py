"""loop(generator, evaluator, max_rounds=N): draft, evaluate, revise; always capped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..contracts import AgentIdentity, Evaluation, Intent, LoopResult
from ..errors import ConfigurationError, ContractError, HandoffError
from ..handoff import annotation_problem, field_annotation, validate_input
from ..models.base import ContextNote, RequestContext
from ..runtime.context import RunContext
from ..step import Step
from ..validation import error_lines

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

    Every one of those fields is type-checked when the loop is built; a value
    a validator still rejects at run time is a ``HandoffError``.
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
        self._fill_adapters: dict[str, TypeAdapter[Any]] = {}  # built on first revision

    def _fill_value(self, name: str, value: Any) -> Any:
        """``value`` as the generator's ``name`` field declares it (a compatible model too)."""
        adapter = self._fill_adapters.get(name)
        if adapter is None:
            field = self.generator.input_type.model_fields[name]
            adapter = self._fill_adapters[name] = TypeAdapter(field_annotation(field))
        try:
            return adapter.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            problems = error_lines(exc, prefix=(name,))
            raise HandoffError(
                f"loop: {name!r} for generator {self.generator.name!r} does not fit its field",
                source=self.evaluator.name if name == "feedback" else self.generator.name,
                target=self.generator.name,
                problems=problems,
            ) from exc

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
                told = RequestContext(
                    round=round_no,
                    feedback=last.feedback,
                    score=last.score,
                    previous_draft=draft.model_dump(mode="json"),
                )
                notes = (
                    ContextNote(
                        f"Round {round_no} of {self.max_rounds}. Your previous draft:\n"
                        f"{draft.model_dump_json()}\nThe evaluator's feedback (score "
                        f"{last.score:.2f}):\n{last.feedback}\nRevise the draft to address "
                        "the feedback.",
                        told,
                    ),
                )
                if self._gen_fills:
                    values = {"previous_draft": draft, "feedback": last.feedback}
                    gen_input = input.model_copy(
                        update={f: self._fill_value(f, values[f]) for f in self._gen_fills}
                    )
            draft = await ctx.run(
                self.generator, gen_input, label=f"{self.generator.name}[{round_no}]", notes=notes
            )
            available = {"draft": draft, "task": input, "round": round_no, "intent": ctx.intent}
            review = validate_input(
                self.evaluator.input_type,
                {k: available[k] for k in self._eval_fills},
                source=self.generator.name,
                target=self.evaluator.name,
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
    # what the loop fills in the evaluator's input, and with what type
    evaluator_gets = {
        "draft": generator.output_type,
        "task": generator.input_type,
        "round": int,
        "intent": Intent,
    }
    for name, given in evaluator_gets.items():
        if name in fields:
            problem = annotation_problem(given, field_annotation(fields[name]))
            if problem:
                problems.append(f"evaluator input field {name!r}: {problem}")
    for name, field in fields.items():
        if name not in EVALUATOR_FILLED and field.is_required():
            problems.append(f"evaluator input field {name!r} is required but nothing fills it")
    # what the loop fills in the generator's input from round two on
    generator_gets = {"previous_draft": generator.output_type, "feedback": str}
    for name in GENERATOR_FILLED:
        field = generator.input_type.model_fields.get(name)
        if field is None:
            continue
        if field.is_required():
            problems.append(f"generator input field {name!r} must be optional (empty in round 1)")
        problem = annotation_problem(generator_gets[name], field_annotation(field))
        if problem:
            problems.append(f"generator input field {name!r}: {problem}")
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
