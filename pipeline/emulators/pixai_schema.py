"""PixAI's GraphQL schema (the part pipeline uses), executed by graphql-core.

The SDL follows pixai-client-js's ``graphql/*.graphql`` and the reference docs. Two
choices worth knowing:

- **``ID`` vs ``String`` for ids.** The SDK declares ``query getTaskById($id: ID!)``;
  the getting-started page writes ``$id: String!``. Both must work, but graphql-core's
  ``VariablesInAllowedPositionRule`` rejects a ``String`` variable in an ``ID`` position.
  The schema keeps PixAI's types (``task(id: ID!)``, ``media(id: String!)``) and
  validation swaps that one rule for ``IdOrStringVariablesRule``, which accepts ``String``
  and ``ID`` variables for each other (both travel as JSON strings). Every other rule is
  graphql-core's own.
- **Errors.** Resolver errors are GraphQL errors with ``extensions.code`` (Apollo-style
  codes; the exact codes PixAI uses are a GUESS): ``TOO_MANY_TASKS`` for the 11th task
  in progress (worded by the ``task_limit_code`` and ``task_limit_message`` knobs),
  ``BAD_USER_INPUT`` for invalid parameters, ``INSUFFICIENT_CREDITS`` for keys with the
  ``broke_key_prefix`` knob, ``NOT_FOUND`` for cancelling an unknown task.
  ``task(id)`` of an unknown task is ``null``, not an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLNullableType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLType,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    execute,
    get_named_type,
    is_list_type,
    is_non_null_type,
    parse,
    specified_rules,
    subscribe,
    type_from_ast,
    validate,
)
from graphql.language import DocumentNode
from graphql.pyutils import AwaitableOrValue
from graphql.validation import ASTValidationRule, VariablesInAllowedPositionRule
from graphql.validation.rules.variables_in_allowed_position import allowed_variable_usage

from pipeline.emulators.pixai_world import EventStream, Invalid, PixaiWorld, TooManyTasks

__all__ = ["SCHEMA", "GqlContext", "Operation", "prepare", "run_operation", "run_subscription"]

_T = TypeVar("_T")

SDL = """
scalar JSONObject
scalar Void

type MediaUrl { variant: String! url: String! }

type Media {
  id: ID!
  type: String!
  width: Int
  height: Int
  urls: [MediaUrl!]!
  imageType: String
}

type Task {
  id: ID!
  userId: ID!
  parameters: JSONObject!
  outputs: JSONObject!
  status: String!
  startedAt: String
  endAt: String
  createdAt: String!
  updatedAt: String!
}

type PersonalEvents { taskUpdated: Task }

type Query {
  task(id: ID!): Task
  media(id: String!): Media
}

type Mutation {
  createGenerationTask(parameters: JSONObject!): Task
  cancelGenerationTask(id: ID!, reason: String): Task
  deleteGenerationTask(id: ID!): Void
}

type Subscription { personalEvents: PersonalEvents }
"""


@dataclass
class GqlContext:
    """Who is asking, and what the HTTP layer must do after execution."""

    world: PixaiWorld
    owner: str
    api_key: str
    base: str
    drop_connection: bool = False
    error_status: int | None = None  # answer this 5xx instead of the result
    streams: list[EventStream] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Operation:
    """A parsed and validated request, or the errors that stopped it."""

    document: DocumentNode | None
    name: str
    kind: OperationType | None
    errors: list[GraphQLError]


class IdOrStringVariablesRule(VariablesInAllowedPositionRule):
    """``VariablesInAllowedPositionRule``, except that ``String`` and ``ID`` variables
    may stand for each other (same wrapping: ``String!`` for ``ID!``)."""

    def leave_operation_definition(self, operation: OperationDefinitionNode, *_: Any) -> None:
        schema = self.context.schema
        for usage in self.context.get_recursive_variable_usages(operation):
            var_def = self.var_def_map.get(usage.node.name.value)
            if var_def is None or usage.type is None:
                continue
            var_type = type_from_ast(schema, var_def.type)
            if var_type is None:
                continue
            swapped = _id_for_string(var_type, usage.type)
            if not allowed_variable_usage(
                schema, swapped, var_def.default_value, usage.type, usage.default_value
            ):
                self.report_error(
                    GraphQLError(
                        f"Variable '${usage.node.name.value}' of type '{var_type}' used"
                        f" in position expecting type '{usage.type}'.",
                        [var_def, usage.node],
                    )
                )


RULES: Collection[type[ASTValidationRule]] = tuple(
    IdOrStringVariablesRule if rule is VariablesInAllowedPositionRule else rule
    for rule in specified_rules
)


def _id_for_string(var_type: GraphQLType, location: GraphQLType) -> GraphQLType:
    names = {get_named_type(var_type).name, get_named_type(location).name}
    if names != {"ID", "String"}:
        return var_type
    return _rewrap(var_type, get_named_type(location))


def _rewrap(var_type: GraphQLType, named: GraphQLType) -> GraphQLType:
    if is_non_null_type(var_type):
        inner = _rewrap(var_type.of_type, named)
        assert isinstance(inner, GraphQLNullableType)
        return GraphQLNonNull(inner)
    if is_list_type(var_type):
        return GraphQLList(_rewrap(var_type.of_type, named))
    return named


# -- resolvers -----------------------------------------------------------------------

Info = GraphQLResolveInfo[Any]


def _ctx(info: Info) -> GqlContext:
    context = info.context
    assert isinstance(context, GqlContext)
    return context


def _error(message: str, code: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


class Root:
    """Root value: graphql-core's default resolver calls these methods by field name."""

    def task(self, info: Info, id: str) -> dict[str, Any] | None:
        ctx = _ctx(info)
        task = ctx.world.owned(id, ctx.owner)
        return None if task is None else ctx.world.task_view(task)

    def media(self, info: Info, id: str) -> dict[str, Any] | None:
        ctx = _ctx(info)
        return ctx.world.media_view(id, ctx.base)

    def createGenerationTask(self, info: Info, parameters: dict[str, Any]) -> dict[str, Any]:
        ctx = _ctx(info)
        world, state = ctx.world, ctx.world.state
        broke = state.knobs.broke_key_prefix
        if broke and ctx.api_key.startswith(broke):
            raise _error("Insufficient credits to create this task", "INSUFFICIENT_CREDITS")
        try:
            task = world.create_task(ctx.owner, parameters)
        except Invalid as invalid:
            raise _error(str(invalid), "BAD_USER_INPUT") from invalid
        except TooManyTasks as busy:
            knobs = state.knobs
            extensions = {"code": knobs.task_limit_code} if knobs.task_limit_code else None
            raise GraphQLError(knobs.task_limit_message, extensions=extensions) from busy
        state.charge(task, "mutation createGenerationTask", {"parameters": parameters})
        if state.drop_after_create():
            ctx.drop_connection = True
        ctx.error_status = state.error_after_create()
        return world.task_view(task)

    def cancelGenerationTask(
        self, info: Info, id: str, reason: str | None = None
    ) -> dict[str, Any]:
        ctx = _ctx(info)
        task = ctx.world.owned(id, ctx.owner)
        if task is None:
            raise _error("Task not found", "NOT_FOUND")
        ctx.world.cancel(task, reason)
        return ctx.world.task_view(task)

    def deleteGenerationTask(self, info: Info, id: str) -> None:
        ctx = _ctx(info)
        if ctx.world.owned(id, ctx.owner) is None:
            raise _error("Task not found", "NOT_FOUND")


def _subscribe_personal_events(_root: Any, info: Info) -> EventStream:
    ctx = _ctx(info)
    stream = EventStream(ctx.world.bus, ctx.owner)
    ctx.streams.append(stream)
    return stream


def _parse_json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("JSONObject must be a JSON object")
    return value


def _build() -> GraphQLSchema:
    schema = build_schema(SDL)
    json_object = schema.type_map["JSONObject"]
    json_object.parse_value = _parse_json_object  # type: ignore[attr-defined]
    void = schema.type_map["Void"]
    void.serialize = lambda _value: None  # type: ignore[attr-defined]
    subscription = schema.subscription_type
    assert subscription is not None
    personal = subscription.fields["personalEvents"]
    personal.subscribe = _subscribe_personal_events
    personal.resolve = lambda event, _info: event
    return schema


SCHEMA = _build()
ROOT = Root()


# -- execution -----------------------------------------------------------------------


def prepare(query: Any, operation_name: Any) -> Operation:
    """Parse and validate; ``name`` is the operation's name for the request counters."""
    if not isinstance(query, str) or not query.strip():
        return Operation(None, "(no query)", None, [GraphQLError("Must provide query string.")])
    try:
        document = parse(query)
    except GraphQLError as error:
        return Operation(None, "(syntax error)", None, [error])
    chosen = _operation(document, operation_name)
    name = str(operation_name or (chosen.name.value if chosen and chosen.name else "anonymous"))
    kind = chosen.operation if chosen else None
    return Operation(document, name, kind, validate(SCHEMA, document, RULES))


def _operation(document: DocumentNode, name: Any) -> OperationDefinitionNode | None:
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
            name is None or (definition.name and definition.name.value == name)
        ):
            return definition
    return None


async def run_operation(
    operation: Operation, ctx: GqlContext, variables: Any, operation_name: Any
) -> ExecutionResult:
    """Execute a validated query or mutation."""
    return await _run(execute, operation, ctx, variables, operation_name)


async def run_subscription(
    operation: Operation, ctx: GqlContext, variables: Any, operation_name: Any
) -> Any:
    """An async iterator of ExecutionResults, or one ExecutionResult with errors."""
    return await _run(subscribe, operation, ctx, variables, operation_name)


async def _run(
    run: Callable[..., AwaitableOrValue[_T]],
    operation: Operation,
    ctx: GqlContext,
    variables: Any,
    operation_name: Any,
) -> _T:
    """``run`` (graphql-core's ``execute`` or ``subscribe``) on a validated operation;
    graphql-core answers at once when nothing is async, else with an awaitable."""
    assert operation.document is not None
    result = run(
        SCHEMA,
        operation.document,
        root_value=ROOT,
        context_value=ctx,
        variable_values=variables if isinstance(variables, dict) else None,
        operation_name=operation_name if isinstance(operation_name, str) else None,
    )
    if inspect.isawaitable(result):
        return await result
    return result
