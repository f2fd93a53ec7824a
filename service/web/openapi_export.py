"""Write the OpenAPI document the app serves to openapi/openapi.json (`make openapi`).

Builds the app with throw-away keys and explicit settings, so it needs no environment,
no database and no network: the document depends on the code alone.

    python -m service.openapi_export [PATH]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.config import Settings
from service.main import create_app
from service.security.crypto import generate_key

DEFAULT_PATH = Path("openapi") / "openapi.json"


def document() -> dict[str, Any]:
    settings = Settings(
        _env_file=None,
        env="development",
        database_url="sqlite+aiosqlite:///:memory:",
        encryption_keys=SecretStr(f"export:{generate_key()}"),
        jwt_hs256_keys=SecretStr("export:" + "x" * 48),
    )
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(document()), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
