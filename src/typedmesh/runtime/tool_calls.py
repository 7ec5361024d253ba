"""Tool calls: scopes checked, arguments validated, side effects journaled once.

A denied call runs nothing. A tool that requires approval waits first for a
person's recorded decision (``approval``: an effect of its own, keyed under
the call), so the run may suspend there; once approved, the call goes on as
any other, exactly once. A call's start is durable before the tool runs and
carries an idempotency key stable across a crash. A ``ToolError`` the
tool raises on purpose (or an exception it declares in ``retry_on``) is told
to the model; any other exception is a bug and fails the step.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import (
    AlreadyClaimed,
    StaleVersion,
    StepFailed,
    ToolDenied,
    ToolError,
    TypedMeshError,
)
from ..validation import error_lines
from .approval import request_approval
from .kinds import TOOL

if TYPE_CHECKING:
    from ..tools import Tool
    from .context import RunContext, RunState

__all__ = ["call_tool"]


async def call_tool(ctx: RunContext, run: RunState, tool: Tool, arguments: dict[str, Any]) -> Any:
    from .context import RunContext

    missing = tool.requires - ctx.allowed_scopes()
    if missing:
        ctx.record("tool.denied", tool=tool.name, missing=sorted(missing))
        raise ToolDenied(tool.name, missing=set(missing), step=ctx.path)
    try:
        parsed = tool.parse_arguments(arguments)
        jsonable_args = parsed.model_dump(mode="json")
        _check_encodable(jsonable_args)
    except ValidationError as exc:
        problems = error_lines(exc)
        ctx.record("tool.invalid_arguments", tool=tool.name, errors=problems)
        raise ToolError(
            f"invalid arguments for tool {tool.name!r}: " + "; ".join(problems), tool=tool.name
        ) from exc
    except UnicodeEncodeError as exc:
        ctx.record("tool.invalid_arguments", tool=tool.name, errors=[str(exc)])
        raise ToolError(
            f"invalid arguments for tool {tool.name!r}: text that is not valid Unicode "
            f"({exc.reason})",
            tool=tool.name,
        ) from exc
    key = ctx.effect_key("tool")
    if tool.requires_approval is not False and tool.needs_approval(parsed):
        await request_approval(ctx, run, tool, key, jsonable_args)  # denied: ApprovalDenied
    idempotency_key = hashlib.sha256(f"{ctx.run_id}:{key}".encode()).hexdigest()[:32]
    tool_ctx = RunContext(
        run, key, ctx.step, idempotency_key=idempotency_key, origin=ctx.event_origin()
    )
    request = {
        "tool": tool.name,
        "arguments": jsonable_args,
        "idempotency_key": idempotency_key,
        "idempotent": tool.idempotent,
    }

    async def execute() -> Any:
        try:
            if tool.timeout is None:
                return tool.to_jsonable(await tool.execute(parsed, tool_ctx))
            async with asyncio.timeout(tool.timeout):
                return tool.to_jsonable(await tool.execute(parsed, tool_ctx))
        except TimeoutError as exc:
            if tool.timeout is None:
                raise StepFailed.wrap(exc, step_path=ctx.path) from exc
            raise ToolError(
                f"tool {tool.name!r} timed out after {tool.timeout:g} s (it was cancelled)",
                tool=tool.name,
            ) from exc
        except (AlreadyClaimed, StaleVersion) as exc:
            # a lost claim or race is the model's to hear about (and report), like a
            # denial; the conflict itself is journaled by the state effect that lost
            raise ToolError(f"tool {tool.name!r} did not act: {exc}", tool=tool.name) from exc
        except TypedMeshError:
            raise
        except tool.retry_on as exc:
            raise ToolError(
                f"tool {tool.name!r} raised {type(exc).__name__}: {exc}", tool=tool.name
            ) from exc
        except Exception as exc:  # a bug in the tool: not the model's to fix
            failed = StepFailed.wrap(exc, step_path=ctx.path)
            raise failed from exc

    result = await run.effects.perform(ctx, TOOL, key, request, execute)
    return tool.from_jsonable(result)


def _check_encodable(value: Any) -> None:
    """Refuse lone surrogates and the like before they reach a journal or a tool."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_encodable(k)
            _check_encodable(v)
    elif isinstance(value, list):
        for item in value:
            _check_encodable(item)
