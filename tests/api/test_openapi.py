"""The OpenAPI document /docs and /redoc are built from: every route described and typed, every error
documented, every setting explained, every input bounded; the docs pages load nothing from another host."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from canaryd.api.app import create_app
from canaryd.settings import Settings

PUBLIC = {"/healthz", "/metrics"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings(bootstrap_token="x" * 32)).openapi()
    return schema


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, item in spec["paths"].items() for m, op in item.items()]


def test_every_route_is_described_typed_and_has_its_errors(spec: dict[str, Any]) -> None:
    """Summary, description, a typed 2xx response with an example, and 401/403/404/413/422 where they apply."""
    problems = []
    schemas = spec["components"]["schemas"]
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        if not op.get("summary") or not op.get("description"):
            problems.append(f"{where}: no summary or description")
        ok = next(code for code in op["responses"] if code.startswith("2"))
        content = op["responses"][ok].get("content", {})
        body = content.get("application/json", {}).get("schema") or content.get("text/plain")
        if ok == "204":  # No Content: nothing to type
            pass
        elif not body:
            problems.append(f"{where}: untyped {ok} response")
        elif path.startswith("/api/v1/") and "traefik" not in path:
            ref = body.get("$ref") or body.get("items", {}).get("$ref")
            if ref is None or "example" not in schemas[ref.rsplit("/", 1)[1]]:
                problems.append(f"{where}: {ok} response is not a model with an example")
        if path not in PUBLIC and "traefik" not in path:
            one = re.search(r"\{\w+_id\}(/(events|promote|rollback|pause|resume))?$", path)
            needed = {"401"} if path == "/api/v1/whoami" else {"401", "403", "422"}
            needed |= {"404"} if one else set()
            needed |= {"413"} if method == "POST" else set()
            needed |= {"409"} if path.endswith(("/promote", "/rollback", "/pause", "/resume")) else set()
            missing = needed - set(op["responses"])
            if missing:
                problems.append(f"{where}: undocumented {sorted(missing)}")
            if op.get("security") != [{"token": []}]:
                problems.append(f"{where}: no bearer security requirement")
    assert not problems, "\n".join(problems)
    scheme = spec["components"]["securitySchemes"]["token"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"


def test_promote_is_one_function() -> None:
    """Routes are written out one per function: the promote route is `def promote`."""
    from canaryd.api import routes, ws

    by_path = {(r.path, r.endpoint.__name__) for r in routes.router.routes}  # type: ignore[attr-defined]
    for action in ("promote", "rollback", "pause", "resume"):
        assert (f"/api/v1/deployments/{{deployment_id}}/{action}", action) in by_path
    assert ws.deployment_ws.__name__ == "deployment_ws"


def test_every_setting_has_a_description_unit_and_default(spec: dict[str, Any]) -> None:
    """Every field of the deployment and proxy settings says what it means, in which unit, and its default."""
    schemas = spec["components"]["schemas"]
    missing = [
        f"{model}.{name}"
        for model in (
            "CanaryConfigOverrides",
            "CheckSpec",
            "ProxySpec",
            "PrometheusSource",
            "PrometheusQueries",
        )
        for name, field in schemas[model]["properties"].items()
        if not re.search(r"\. Unit: .+\. Default: .+\.$", field.get("description", ""))
    ]
    assert not missing, f"undocumented settings: {missing}"
    stage = schemas["CanaryConfigOverrides"]["properties"]["stage_duration"]["description"]
    assert "Unit: seconds. Default: 300." in stage


def walk(node: Any, path: str, schemas: dict[str, Any], seen: set[str]) -> list[str]:
    """Every string without a bound (maxLength, enum, const, or a format) and array without maxItems."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        return walk(schemas[name], name, schemas, seen)
    out = []
    kind = node.get("type")
    if kind == "string" and not ({"maxLength", "enum", "const"} & set(node)):
        out.append(path)
    if kind == "array" and "maxItems" not in node:
        out.append(path)
    if (
        kind == "object"
        and isinstance(node.get("additionalProperties"), dict)
        and "maxProperties" not in node
    ):
        out.append(path)
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key, [])):
            out += walk(sub, f"{path}|{i}", schemas, seen)
    for name, sub in node.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}", schemas, seen)
    for key in ("items", "additionalProperties"):
        out += walk(node.get(key), f"{path}[]", schemas, seen)
    return out


def test_every_input_is_bounded(spec: dict[str, Any]) -> None:
    """Strings and lists in every request body and parameter have maxima (bodies are also capped at 1 MiB)."""
    schemas = spec["components"]["schemas"]
    unbounded = []
    for method, path, op in operations(spec):
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        unbounded += walk(body, f"{method} {path} body", schemas, set())
        for param in op.get("parameters", []):
            schema = param["schema"]
            if schema.get("type") == "integer":
                continue
            unbounded += walk(schema, f"{method} {path} {param['name']}", schemas, set())
    assert not unbounded, "\n".join(unbounded)
    assert walk({"type": "array", "items": {"type": "string"}}, "probe", {}, set()) == ["probe", "probe[]"]


def test_websocket_protocol_is_in_the_description(spec: dict[str, Any]) -> None:
    """The WebSocket is not an OpenAPI operation, so its protocol is in the API's description."""
    text = spec["info"]["description"]
    for needle in ("after_seq", "4401", "4403", "4404", "1000", '"final": true', "413"):
        assert needle in text, needle


async def test_docs_pages_use_only_local_assets(embedded_stack: Any) -> None:
    """/docs and /redoc reference scripts and styles under /ui/static only, and those are served."""
    async with httpx.AsyncClient(base_url=embedded_stack.base) as client:
        for page in ("/docs", "/redoc", "/ui"):
            r = await client.get(page)
            assert r.status_code == 200
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
            assets += re.findall(r"""url: ?['"]([^'"]+)['"]""", r.text)
            assert assets, page
            for asset in (a for a in assets if not a.startswith("#")):
                assert asset.startswith("/") and not asset.startswith("//"), f"{page} loads {asset}"
                if asset.startswith("/ui/static/"):
                    assert (await client.get(asset)).status_code == 200, asset
