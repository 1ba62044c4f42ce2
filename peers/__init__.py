"""The same HIT artifact and index served through mainstream model servers, for the open-loop
comparison of `prerank openloop --peer` (benchmark harness code, not a serving path).

Each module is written as its framework's documentation shows, around the service's own `Scorer`
(the work per request is the same: parse, user tower, gather, MaxSim, top-k by eCPM); what differs
is the server around it. `python -m peers.litserve_app --store URL --port P` and
`python -m peers.rayserve_app ...` start them.
"""
