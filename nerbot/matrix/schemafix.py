"""Make nio's schema validation cheap: the same Draft 4 schemas, compiled once.

nio validates every response, every event and every decrypted payload with
``jsonschema.Draft4Validator(schema).validate(instance)``, building a new validator each time
and walking the schema through ``referencing`` on every call: a fifth of the bot's CPU per
verification went there. ``fastjsonschema`` compiles each (static) schema once into a plain
Python function with the same Draft 4 rules, including nio's ``default`` filling and its
``user_id``/``http_url`` formats. A failure is re-raised as ``jsonschema.ValidationError``,
which is what nio catches, so nio's handling of bad input does not change. A schema that
fastjsonschema cannot compile (nio ships one invalid schema) keeps nio's original path, which
reports it as ``SchemaError`` as before.

nio imports ``validate_json`` by name into four modules; ``install`` replaces all four once
per process and is idempotent. The replacement holds only compiled validators: no state that
changes what a call returns.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
import nio.schemas

logger = logging.getLogger(__name__)

NIO_MODULES = ("nio.schemas", "nio.responses", "nio.crypto.olm_machine", "nio.events.misc")
DRAFT4 = "http://json-schema.org/draft-04/schema#"
MAX_SCHEMAS = 512  # nio's schemas are class attributes (~100); a runaway cache means misuse

Check = Callable[[Any], bool]


def _format(check: Callable[[str], bool]) -> Check:
    """nio's format checks raise ValueError for a bad value; fastjsonschema wants a bool."""
    def checked(value: Any) -> bool:
        try:
            return bool(check(value))
        except ValueError:
            return False
    return checked


# jsonschema's FormatChecker ignores formats it does not know (nio uses "room_id" that way).
FORMATS: dict[str, Check] = {
    "user_id": _format(nio.schemas.check_user_id),
    "http_url": _format(nio.schemas.check_http_url),
    "room_id": lambda value: True,
}


def with_nio_defaults(schema: Any) -> Any:
    """The schema rewritten so fastjsonschema fills defaults exactly as nio's validator does.

    nio fills a missing property's ``default`` and then validates it like any other value, so
    the defaults of the default's own properties are filled too: fastjsonschema inserts the
    default as it is, so each default is completed here. And jsonschema checks keywords in
    the schema's order, so a defaulted property listed before ``required`` satisfies it;
    fastjsonschema checks ``required`` first, so such names are dropped from it.
    """
    if isinstance(schema, list):
        return [with_nio_defaults(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: with_nio_defaults(value) for key, value in schema.items()}
    if "default" in result:
        result["default"] = completed_default(result)
    keys = list(schema)
    properties, required = result.get("properties"), result.get("required")
    if isinstance(properties, dict) and isinstance(required, list) and \
            keys.index("properties") < keys.index("required"):
        result["required"] = [name for name in required
                              if not (isinstance(properties.get(name), dict)
                                      and "default" in properties[name])]
    return result


def completed_default(schema: dict[str, Any]) -> Any:
    default = copy.deepcopy(schema["default"])
    properties = schema.get("properties")
    if isinstance(default, dict) and isinstance(properties, dict):
        for name, subschema in properties.items():
            if isinstance(subschema, dict) and "default" in subschema:
                default.setdefault(name, completed_default(subschema))
    return default


class CompiledValidation:
    """A drop-in ``validate_json(instance, schema)`` that compiles each schema once."""

    def __init__(self, original: Callable[[Any, Any], None]) -> None:
        self.original = original
        # id(schema) -> (schema kept alive so its id is not reused, compiled or None)
        self._compiled: dict[int, tuple[Any, Callable[[Any], Any] | None]] = {}

    def __call__(self, instance: Any, schema: Any) -> None:
        entry = self._compiled.get(id(schema))
        if entry is None or entry[0] is not schema:
            entry = (schema, self._compile(schema))
            if len(self._compiled) < MAX_SCHEMAS:
                self._compiled[id(schema)] = entry
        validate = entry[1]
        if validate is None:
            self.original(instance, schema)
            return
        try:
            validate(instance)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise jsonschema.ValidationError(exc.message) from None

    @staticmethod
    def _compile(schema: Any) -> Callable[[Any], Any] | None:
        if not isinstance(schema, dict):
            return None
        try:
            return fastjsonschema.compile({**with_nio_defaults(schema), "$schema": DRAFT4},
                                          formats=FORMATS, use_default=True)
        except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError):
            logger.debug("Schema kept on jsonschema (fastjsonschema cannot compile it)")
            return None


def install() -> CompiledValidation:
    """Point nio at the compiled validation (once per process); returns the one in use."""
    current = nio.schemas.validate_json
    if isinstance(current, CompiledValidation):
        return current
    compiled = CompiledValidation(current)
    for name in NIO_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "validate_json", None) is current:
            setattr(module, "validate_json", compiled)  # noqa: B010 (nio imports it by name)
    return compiled
