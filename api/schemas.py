"""Request bodies of the v1 API as msgspec structs: types and bounds checked while decoding.

Bounds that depend on settings (candidate count, feature count) are checked
after decoding, in the handlers, with the same error shape.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request
from litestar.params import QueryParameter
from msgspec import Meta, Struct

from api.champion.schemas import AutoOptimizeIn

__all__ = [
    "ActivateRequest",
    "BlockRequest",
    "CandidateIn",
    "ContextIn",
    "DecideRequest",
    "KeyRequest",
    "PolicyRequest",
    "RewardRequest",
    "RotateRequest",
    "SlotRequest",
    "check_json_value",
    "decode",
    "decode_request",
    "guard_request",
]

Id = Annotated[str, Meta(min_length=1, max_length=256)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Short = Annotated[str, Meta(max_length=256)]
Scalar = str | float | bool
FeatureMap = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=64)], Scalar], Meta(max_length=64)]
Finite = Annotated[float, Meta(ge=-1e12, le=1e12)]


class TimeIn(Struct, forbid_unknown_fields=True):
    timestamp: datetime | None = None
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class ContextIn(Struct, forbid_unknown_fields=True):
    time: TimeIn | None = None
    device: Annotated[dict[Annotated[str, Meta(max_length=32)], Short], Meta(max_length=8)] | None = None
    location: Annotated[dict[Annotated[str, Meta(max_length=32)], Short], Meta(max_length=8)] | None = None
    user: FeatureMap | None = None


class CandidateIn(Struct, forbid_unknown_fields=True):
    id: Id
    features: FeatureMap = {}


class DecideRequest(Struct, forbid_unknown_fields=True):
    event_id: Id | None = None
    unit_id: Id | None = None
    context: ContextIn | None = None
    candidates: Annotated[list[CandidateIn], Meta(max_length=1000)] | None = None
    exclude: Annotated[list[Id], Meta(max_length=1000)] = []
    consent: bool = True
    defer_activation: bool = False


class ActivateRequest(Struct, forbid_unknown_fields=True):
    pass


class RewardRequest(Struct, forbid_unknown_fields=True):
    value: Finite
    reward_id: Id | None = None


class BlockRequest(Struct, forbid_unknown_fields=True):
    features: FeatureMap = {}


class VWIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    exploration: str | None = None
    epsilon: float | None = None
    gamma_scale: float | None = None
    gamma_exponent: float | None = None
    cover: int | None = None
    bag: int | None = None
    softmax_lambda: float | None = None
    first: int | None = None
    learning_rate: float | None = None
    power_t: float | None = None
    l2: float | None = None
    cb_type: str | None = None
    interactions: Annotated[list[Annotated[str, Meta(max_length=8)]], Meta(max_length=20)] | None = None
    ignore_linear_context: bool | None = None
    bits: int | None = None


class LinearIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The options of a ``linear`` policy (``bandits.linear.LinearConfig`` validates the values)."""

    exploration: str | None = None
    gamma_scale: float | None = None
    gamma_exponent: float | None = None
    floor: float | None = None
    ridge: float | None = None
    prior_reward: float | None = None
    noise: float | None = None
    thompson_draws: int | None = None
    half_life: float | None = None
    max_features: int | None = None
    shared: bool | None = None
    shared_dim: int | None = None
    max_blocks: int | None = None
    new_block_share: float | None = None
    new_block_min_examples: int | None = None


class PolicyRequest(Struct, forbid_unknown_fields=True):
    kind: Literal["vw", "linear", "uniform", "fixed", "rules"] = "vw"
    vw: VWIn | None = None
    linear: LinearIn | None = None
    block: Id | None = None
    rules: dict[str, Any] | None = None


class KeyRequest(Struct, forbid_unknown_fields=True):
    scope: Literal["decide", "admin"]
    name: Annotated[str, Meta(max_length=128)] = ""


class RotateRequest(Struct, forbid_unknown_fields=True):
    grace_s: Annotated[float, Meta(ge=0, le=30 * 24 * 3600)] = 0.0
    """Seconds the old key keeps working (time to deploy the new one)."""


class SlotRequest(Struct, forbid_unknown_fields=True):
    default_block: Id | None = None
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    reward_window_s: Annotated[int, Meta(ge=0, le=30 * 24 * 3600)] | None = None
    default_reward: Finite | None = None
    reward_aggregation: Literal["sum", "first", "max"] | None = None
    reward_range: Annotated[list[Finite], Meta(min_length=2, max_length=2)] | None = None
    learning_mode: Literal["online", "apprentice", "logging-only"] | None = None
    require_activation: bool | None = None
    policy: Name | PolicyRequest | None = None
    holdout_share: Annotated[float, Meta(ge=0.0, le=0.5)] | None = None
    auto_optimize: AutoOptimizeIn | None = None


_decoders: dict[type, msgspec.json.Decoder] = {}  # type: ignore[type-arg]


def decode(body: bytes, kind: type[Struct]) -> Struct:
    """Decode a JSON body into ``kind``; raises msgspec.ValidationError / DecodeError."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(body)  # type: ignore[no-any-return]


def decode_request(body: bytes, kind: type[Struct]) -> Any:
    """Decode a request body, turning msgspec's errors into a 400 that names the field."""
    from api.errors import ApiError, msgspec_field

    try:
        value = decode(body or b"{}", kind)
    except msgspec.ValidationError as error:
        text = str(error)
        field = msgspec_field(error)
        for marker in ("unknown field `", "missing required field `"):
            if marker in text:
                name = text.split(marker, 1)[1].split("`", 1)[0]
                field = f"{field}.{name}" if field else name
        raise ApiError(400, "invalid_request", text, field) from error
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}", "body") from error
    except RecursionError as error:
        raise ApiError(400, "malformed_json", f"the body nests deeper than {MAX_DEPTH} levels", "body") from error
    if b"\\u0000" in body:  # cheap test first: the walk runs only when a NUL may be there
        check_json_value(msgspec.json.decode(body))
    return value


MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have."""
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
"""Integer ids and versions in paths and queries: a 32-bit INTEGER column on PostgreSQL."""
BODY_INT_MIN, BODY_INT_MAX = -(2**63), 2**63 - 1
"""Integers in bodies: what SQLite and a PostgreSQL BIGINT hold."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_json_value(value: Any, field: str | None = None, depth: int = 0) -> None:
    """Refuse (400 naming the field) what no column can hold or no handler should recurse into:
    NUL characters (PostgreSQL text cannot hold them), integers beyond 64 bits, nesting deeper
    than :data:`MAX_DEPTH`."""
    from api.errors import ApiError

    if isinstance(value, str):
        if "\x00" in value:
            raise ApiError(400, "invalid_request", "text may not contain NUL characters", field or "body")
    elif isinstance(value, bool | float) or value is None:
        return
    elif isinstance(value, int):
        if not BODY_INT_MIN <= value <= BODY_INT_MAX:
            raise ApiError(400, "invalid_request", "integers must fit in 64 bits", field or "body")
    elif depth >= MAX_DEPTH:
        raise ApiError(400, "malformed_json", f"the body nests deeper than {MAX_DEPTH} levels", field or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{field}.{key}" if field else str(key)
            if "\x00" in key:
                raise ApiError(400, "invalid_request", "names may not contain NUL characters", field or "body")
            check_json_value(item, name, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, f"{field}.{index}" if field else str(index), depth + 1)


async def guard_request(request: Request) -> None:  # type: ignore[type-arg]
    """Litestar ``before_request`` of every route: what would reach the database or the file system
    unusable is refused here, the same way for every endpoint (a 4xx naming the field):

    - a path with control characters (``%00``, ``%0a``): 404, no resource has such a name;
    - an integer path parameter outside the 32-bit range of the id columns: 404;
    - an integer query parameter outside it, or a query value with a NUL: 400;
    - a JSON body with NUL characters, integers beyond 64 bits, or nested deeper than
      :data:`MAX_DEPTH` (binary bodies, ``application/octet-stream``, are not JSON).
    """
    from api.errors import ApiError

    if _CONTROL.search(request.scope["path"]):
        raise ApiError(404, "not_found", "no resource has a name with control characters", "path")
    for name, value in request.path_params.items():
        if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            raise ApiError(404, "not_found", f"no {name} {value}", name)
    parameters = request.route_handler.parsed_fn_signature.parameters
    for name, raw in request.query_params.items():
        if "\x00" in raw:
            raise ApiError(400, "invalid_request", "query values may not contain NUL characters", name)
        definition = parameters.get(name)
        if (definition is not None and isinstance(definition.kwarg_definition, QueryParameter)
                and int in (definition.annotation, *(t.annotation for t in definition.inner_types or ()))):
            try:
                number = int(raw)
            except ValueError:
                continue  # not a number: Litestar's own validation answers
            if not INT_MIN <= number <= INT_MAX:
                raise ApiError(400, "invalid_request", f"{name} must lie within [{INT_MIN}, {INT_MAX}]", name)
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and not request.headers.get(
            "content-type", "").startswith("application/octet-stream"):
        body = await request.body()
        if body.lstrip()[:1] in (b"{", b"["):
            try:
                value = msgspec.json.decode(body)
            except RecursionError as error:
                raise ApiError(400, "malformed_json", f"the body nests deeper than {MAX_DEPTH} levels", "body") from error
            except msgspec.DecodeError:
                return  # the handler reports malformed JSON in its own words
            check_json_value(value)


def vw_options(vw: VWIn | None) -> dict[str, object]:
    """Only the options the caller set (the rest keep VWConfig defaults)."""
    if vw is None:
        return {}
    return {k: v for k, v in msgspec.structs.asdict(vw).items() if v is not None}


def linear_options(linear: LinearIn | None) -> dict[str, object]:
    """Only the options the caller set (the rest keep LinearConfig defaults)."""
    if linear is None:
        return {}
    return {k: v for k, v in msgspec.structs.asdict(linear).items() if v is not None}


def policy_config(request: PolicyRequest) -> Any:
    """The validated ``bandits.policies.PolicyConfig`` of a request (raises InvalidPolicy naming the field)."""
    from bandits.linear import LinearConfig
    from bandits.policies import PolicyConfig, VWConfig

    vw = VWConfig.from_dict(vw_options(request.vw)) if request.kind == "vw" else None
    linear = LinearConfig.from_dict(linear_options(request.linear)) if request.kind == "linear" else None
    return PolicyConfig(kind=request.kind, vw=vw, linear=linear, block=request.block, rules=request.rules)
