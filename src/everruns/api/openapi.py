"""Print the OpenAPI document: `python -m everruns.api.openapi > docs/openapi.json`."""

from __future__ import annotations

import json
import sys
from typing import Any

from everruns.api.app import create_app


def document() -> dict[str, Any]:
    return create_app().openapi()


def main() -> None:
    sys.stdout.write(json.dumps(document(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
