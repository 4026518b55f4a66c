"""Run an Argo CD resource health script the way Argo CD does: Lua 5.1 (Argo CD embeds
gopher-lua, a Lua 5.1), the object as the global ``obj`` (maps as tables, lists as tables indexed
from 1), the script's returned table read as ``{status, message}``, and only the libraries Argo CD
opens for it (base, table, string, math): a script reaching for ``os`` or ``io`` fails here too.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO / "deploy" / "argocd" / "resource_customizations"
LUA = shutil.which("lua5.1")
MISSING = "lua5.1 is not installed (Debian: apt-get install -y lua5.1): the Argo CD health check runs on it"

HARNESS = """
local chunk = assert(loadfile({script}))
local env = {{obj = {obj}}}
for _, name in ipairs({{"assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
                        "tostring", "type", "unpack", "xpcall"}}) do
  env[name] = _G[name]
end
env.table, env.string, env.math = table, string, math
setfenv(chunk, env)
local hs = chunk()
assert(type(hs) == "table", "the script returned " .. type(hs) .. ", not a table")
io.write(tostring(hs.status), "\\0", tostring(hs.message))
"""


def lua(value: Any) -> str:
    """A Lua literal for a JSON-like value (None, as a JSON null decoded by Argo CD, is nil)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value}: not a JSON number")
        return repr(value)
    if isinstance(value, str):
        # three-digit decimal escapes, so that a digit after one is not read as part of it
        plain = (chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in value.encode())
        return '"' + "".join(plain) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(str(k))}] = {lua(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    """The script's verdict on ``obj``: ``{"status": ..., "message": ...}``."""
    assert LUA is not None, MISSING
    program = HARNESS.format(script=lua(str(script)), obj=lua(obj))
    out = subprocess.run([LUA, "-"], input=program.encode(), capture_output=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed on {obj.get('metadata', {}).get('name')}: {out.stderr.decode()}")
    status, message = out.stdout.decode().split("\0", 1)
    return {"status": status, "message": message}
