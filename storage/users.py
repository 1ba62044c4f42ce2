"""The online user store: what each user did since the last export, one Redis key per user.

`prerank ingest` writes it from the event stream; every replica reads the requesting user's
row (one GET) and adds the recent clicks to the behaviour history the model reads. The row is
JSON written by a Lua script, so one event is applied atomically: counters, the last clicked
ads (most recent last, bounded), and the ids of the user's last events, which make a replayed
event a no-op (at-least-once delivery, idempotent per event id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["APPLY_EVENT", "HISTORY_MAX", "DEDUPE_WINDOW", "UserRow", "parse_user_row"]

#: Recent clicks kept per user (the oldest drop out first).
HISTORY_MAX = 50
#: Event ids remembered per user: a redelivered event among the user's last this-many is ignored.
DEDUPE_WINDOW = 64

#: KEYS[1]: the user's row. ARGV: event id, kind (click|impression), ad id, time, history max, window.
#: Returns 1 when applied, 0 for a duplicate. Ad ids stay strings (Lua numbers are doubles).
APPLY_EVENT = """
local raw = redis.call('GET', KEYS[1])
local row
if raw then row = cjson.decode(raw) else row = {} end
local ids = row['ids'] or {}
if type(ids) ~= 'table' then ids = {} end
for _, id in ipairs(ids) do
  if id == ARGV[1] then return 0 end
end
table.insert(ids, ARGV[1])
while #ids > tonumber(ARGV[6]) do table.remove(ids, 1) end
local clicks = row['clicks'] or {}
if type(clicks) ~= 'table' then clicks = {} end
if ARGV[2] == 'click' then
  table.insert(clicks, ARGV[3])
  while #clicks > tonumber(ARGV[5]) do table.remove(clicks, 1) end
  row['n_clicks'] = (row['n_clicks'] or 0) + 1
else
  row['n_impressions'] = (row['n_impressions'] or 0) + 1
end
row['ids'] = ids
row['clicks'] = clicks
row['last_event'] = ARGV[1]
row['last_time'] = tonumber(ARGV[4])
redis.call('SET', KEYS[1], cjson.encode(row))
return 1
"""


@dataclass(frozen=True)
class UserRow:
    """One user's online row."""

    clicks: list[int] = field(default_factory=list)  # clicked ad ids, most recent last
    n_clicks: int = 0
    n_impressions: int = 0
    last_event: str | None = None
    last_time: float | None = None


def parse_user_row(raw: bytes | None) -> UserRow | None:
    """The row as stored (None: no events for this user). ValueError for a damaged row."""
    if raw is None:
        return None
    data: Any = json.loads(raw)
    clicks = data.get("clicks") or []  # Lua's cjson writes an empty list as {}
    return UserRow(
        clicks=[int(c) for c in (clicks if isinstance(clicks, list) else [])],
        n_clicks=int(data.get("n_clicks", 0)),
        n_impressions=int(data.get("n_impressions", 0)),
        last_event=data.get("last_event"),
        last_time=data.get("last_time"),
    )
