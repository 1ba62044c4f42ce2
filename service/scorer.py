"""The scoring path: user tower once, gather candidate rows, one batched score, eCPM sort.

Plain Python and torch; no HTTP. The live `ServingVersion` is read once per request, so the
model and index that score a request always belong to the same published version.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from models.base import AdBatch
from models.features import Features, FeatureSpec, Jagged, Kind, default_features, move_features
from service.batching import UserTowerBatcher
from service.errors import InvalidInput, NotReady, Problem, UnknownUser, VersionUnavailable
from service.schemas import PrerankRequest, RetrieveRequest, UserInput
from service.store import ServingVersion
from service.users import Lookup, UserStore

__all__ = ["ScoreResult", "Scorer"]


#: Hits fetched per user head = ANN_OVERSAMPLE * k * H_a, then rescored exactly (sum-of-max is not
#: decomposable per head, so each head's search over-fetches).
ANN_OVERSAMPLE = 4
#: Bytes of ad rows gathered and scored per step (about the size of a core's L2 cache).
CHUNK_BYTES = 1 << 20
MIN_CHUNK_ROWS = 256
#: Below this many ad heads, /retrieve scores the whole corpus instead of searching FAISS.
EXACT_BELOW = 200_000


@dataclass
class ScoreResult:
    """A ranked answer plus per-stage timings in milliseconds."""

    version: ServingVersion
    user_known: bool
    ad_ids: np.ndarray
    pctr: np.ndarray
    ecpm: np.ndarray
    unknown_ad_ids: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    user_event: str | None = None  # the last event of the user's online row that this response reflects
    arm: str | None = None  # the experiment arm that scored it
    experiment: str | None = None

    def payload(self, request_id: str | None) -> dict[str, Any]:
        """The response body as columns (numpy arrays are serialised by orjson)."""
        return {
            "request_id": request_id,
            "model_version": self.version.model_version,
            "index_version": self.version.version,
            "delta_seq": self.version.delta_seq,
            "user_known": self.user_known,
            "ad_ids": self.ad_ids,
            "pctr": self.pctr,
            "ecpm": self.ecpm,
            "unknown_ad_ids": self.unknown_ad_ids,
            "user_event": self.user_event,
            "experiment": self.experiment,
            "arm": self.arm,
        }


def _ann_search(ann: Any, queries: np.ndarray, per_head: int) -> np.ndarray:
    """FAISS ids of each query's `per_head` nearest ad heads (-1 where fewer were found).

    Search parameters are per call: the shared index is never mutated by request threads. An IVF
    index (large corpora) probes the lists it was built with; where that finds fewer than
    `per_head` heads (clustered corpora leave lists near a query empty), the probe widens 4x at a
    time, up to every list.
    """
    import faiss

    nprobe = int(ann.nprobe)
    while True:
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[attr-defined,call-arg]
        hits = np.asarray(ann.search(queries, per_head, params=params)[1])
        if nprobe >= ann.nlist or (hits >= 0).all():
            return hits
        nprobe = min(int(ann.nlist), nprobe * 4)


def _user_loc(*rest: str) -> tuple[str, ...]:
    return ("body", "user", *rest)


def _encode_value(spec: FeatureSpec, value: object, version: ServingVersion) -> torch.Tensor | Jagged | Problem:
    """The encoded feature, or the Problem with the value."""
    where = _user_loc("features", spec.name)
    if spec.kind is Kind.DENSE:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return Problem(where, f"must be a finite number, got {value!r}", "value_error")
        return torch.tensor([float(value)])
    if spec.boundaries is not None:  # a dense value bucketed into a sparse id
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return Problem(where, f"must be a finite number, got {value!r}", "value_error")
        return torch.from_numpy(spec.bucketize([value]))
    vocab = version.bundle.vocabs[spec.vocab or ""]
    if spec.kind is Kind.SEQUENCE:
        if not isinstance(value, list):
            return Problem(where, f"must be a list of ids, got {type(value).__name__}", "value_error")
        encoded = vocab.encode(value)
        encoded = spec.truncate(encoded[encoded > 0])  # unknown tokens carry no information in a pool
        return Jagged(torch.from_numpy(encoded), torch.zeros(1, dtype=torch.int64))
    if isinstance(value, list | float):
        return Problem(where, f"must be a single id (string or integer), got {value!r}", "value_error")
    return torch.tensor([vocab.encode_one(value)])


class Scorer:
    """Holds the live version and scores requests against it.

    Args:
        device: torch device of the ad matrix and the model.
        users: the Redis user stores: per-request snapshot rows (versions published with them) and
            online rows, whose recent clicks extend the history field (if any).
        batcher: encodes the users of concurrent requests together (service/batching.py); None:
            each request runs the user tower in its own thread.
    """

    def __init__(
        self, device: str = "cpu", users: UserStore | None = None, batcher: UserTowerBatcher | None = None
    ) -> None:
        self.device = device
        self.users = users
        self.batcher = batcher
        self._live: ServingVersion | None = None
        self._swap_lock = threading.Lock()
        self.arms: Any = None  # service.experiments.ArmSet of the running experiment, or None
        self.shadow: Any = None  # service.experiments.Shadow scoring sampled requests, or None

    @property
    def live(self) -> ServingVersion | None:
        return self._live

    def swap(self, version: ServingVersion) -> ServingVersion | None:
        """Makes `version` live in one reference assignment; returns the previous one."""
        with self._swap_lock:
            previous, self._live = self._live, version
        return previous

    def _version(self) -> ServingVersion:
        version = self._live
        if version is None:
            raise NotReady("version", "no model/index version is loaded")
        return version

    def user_features(
        self, user: UserInput, unknown_user: str, version: ServingVersion
    ) -> tuple[Features, bool, str | None]:
        """Stored features of the user (if known) with the online store's recent clicks added to
        the history, overridden by the request's raw features. Also returns (known, last event)."""
        schema = version.bundle.schema
        fields = {f.name: f for f in schema.user_fields}
        problems = [
            Problem(_user_loc("features", name), f"not a user feature of this model; known: {sorted(fields)}", "extra")
            for name in sorted(set(user.features) - set(fields))
        ]
        encoded = {name: _encode_value(fields[name], v, version) for name, v in user.features.items() if name in fields}
        problems += [p for p in encoded.values() if isinstance(p, Problem)]
        if problems:
            raise InvalidInput.of(problems)
        link = version.history
        want_online = self.users is not None and link is not None and link.user_field not in encoded
        stored, found = (None, Lookup()) if user.id is None else self._stored_user(version, str(user.id), want_online)
        known = stored is not None or bool(user.features)
        if stored is None and not user.features and unknown_user == "reject" and found.available:
            raise UnknownUser(_user_loc("id"), f"user {user.id!r} is not in the user feature store")
        feats = stored if stored is not None else default_features(schema.user_fields)
        event = None
        online = found.online if want_online else None
        if online is not None and link is not None:
            event = online.last_event
            tokens = version.click_tokens(np.asarray(online.clicks, dtype=np.int64))  # most recent last
            seq = feats[link.user_field]
            if len(tokens) and isinstance(seq, Jagged):
                spec = fields[link.user_field]
                history = seq.values.cpu().numpy()
                ids = np.concatenate([tokens[::-1], history] if spec.newest_first else [history, tokens])
                kept = torch.from_numpy(spec.truncate(ids)).to(seq.values.device)
                feats[link.user_field] = Jagged(kept, seq.offsets)
        for name, value in encoded.items():
            feats[name] = cast(torch.Tensor | Jagged, value)
        return feats, known, event

    def _stored_user(self, version: ServingVersion, user_id: str, want_online: bool) -> tuple[Features | None, Lookup]:
        """The user's snapshot features in `version` (None: not stored, or the store is down) and
        what the Redis round trip found (the online row if `want_online`)."""
        if version.user_codec is None:  # replicated: the table is in memory, only the online row is read
            row = version.user_rows.get(user_id)
            stored = None if row is None else version.index.users.take(np.array([row], dtype=np.int64), self.device)
            found = self.users.lookup(user_id, online=True) if want_online and self.users is not None else Lookup()
            return stored, found
        if self.users is None:  # a per-request version without a Redis client: nothing can be known
            return None, Lookup(available=False)
        found = self.users.lookup(
            user_id, online=want_online, version=version.version, codec=version.user_codec, buckets=version.user_buckets
        )
        if found.features is None:
            return None, found
        return found.features.take(np.zeros(1, dtype=np.int64), self.device), found

    def gather(self, version: ServingVersion, rows: np.ndarray) -> AdBatch:
        """Candidate rows of the ad matrix as the model scores them (`AdRows.take`)."""
        return version.rows.take(torch.from_numpy(rows).to(version.rows.device))

    def _rank(
        self,
        version: ServingVersion,
        user: torch.Tensor,
        rows: np.ndarray,
        bids: np.ndarray | None,
        top_k: int | None,
        timings: dict[str, float],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores index rows for one encoded user; returns (order, pctr, ecpm) with order best-first."""
        if len(rows) == 0:  # every candidate unknown
            empty = np.zeros(0, np.float32)
            return np.zeros(0, np.int64), empty, empty
        logits = self.score_rows(version, user, rows, timings)
        t2 = time.perf_counter()
        pctr = version.bundle.calibrator.probabilities(logits.float().cpu().numpy())
        ecpm = pctr * (version.bids[rows] if bids is None else bids)
        k = len(ecpm) if top_k is None else min(top_k, len(ecpm))
        if k < len(ecpm):
            # The k best, ties at the k-th value broken by candidate order, so that top_k is
            # exactly the prefix of the full stable order (argpartition alone picks any tie).
            kth = ecpm[np.argpartition(-ecpm, k - 1)[k - 1]]
            above = np.flatnonzero(ecpm > kth)
            top = np.sort(np.concatenate([above, np.flatnonzero(ecpm == kth)[: k - len(above)]]))
            order = top[np.argsort(-ecpm[top], kind="stable")]
        else:
            order = np.argsort(-ecpm, kind="stable")
        timings["sort"] = (time.perf_counter() - t2) * 1e3
        return order, pctr, ecpm

    def score_rows(
        self, version: ServingVersion, user: torch.Tensor, rows: np.ndarray, timings: dict[str, float] | None = None
    ) -> torch.Tensor:
        """Logits of index rows for one user, (n,): gather and score fused chunk by chunk.

        On the CPU each chunk of candidate rows is gathered into a cache-sized buffer and scored
        while it is still in cache, so the ad bytes cross the memory bus once instead of three
        times (gather read, gather write, score read). On a GPU the rows go in one gather and one
        score: each chunk would cost kernel launches, and the device's L2 holds far more.
        Gather and score times add up in `timings` (on a GPU: time to launch, not to finish).
        """
        if version.rows.device.type == "cuda":
            chunk = max(len(rows), 1)
        else:
            chunk = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(version.rows.row_bytes, 1))
        model = version.bundle.model
        gather_s = score_s = 0.0
        parts = []
        with torch.inference_mode():
            for start in range(0, len(rows), chunk):
                t0 = time.perf_counter()
                ads = self.gather(version, rows[start : start + chunk])
                t1 = time.perf_counter()
                parts.append(model.score(user, ads))
                gather_s += t1 - t0
                score_s += time.perf_counter() - t1
        if timings is not None:
            timings.update(gather=gather_s * 1e3, score=score_s * 1e3)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def encode_user(self, version: ServingVersion, feats: Features) -> torch.Tensor:
        """The user tower on the serving device, (1, H_u, p): in a batch shared with concurrent
        requests where a batcher is set."""
        moved = move_features(feats, version.rows.device)
        if self.batcher is not None:
            return self.batcher.encode(version, moved)
        with torch.inference_mode():
            return version.bundle.model.encode_user(moved)

    def prerank(self, request: PrerankRequest, version: ServingVersion | None = None) -> ScoreResult:
        """Scores and ranks the request's candidates by eCPM: with `version` if given, else with the
        user's experiment arm if an experiment runs, else with the live version."""
        arm = experiment = None
        if version is None:
            version = self._version()
            arms = self.arms
            if arms is not None and request.user.id is not None:
                arm, arm_version = arms.pick(str(request.user.id))
                experiment = arms.experiment.name
                version = arm_version or version
        t0 = time.perf_counter()
        feats, user_known, event = self.user_features(request.user, request.unknown_user, version)
        ad_ids = request.candidates.ids
        rows, known = version.lookup(ad_ids)
        bids = request.candidates.bid_array
        if bids is not None:
            bids = bids[known]
        t1 = time.perf_counter()
        user = self.encode_user(version, feats)
        timings = {"features": (t1 - t0) * 1e3, "user_tower": (time.perf_counter() - t1) * 1e3}
        order, pctr, ecpm = self._rank(version, user, rows, bids, request.top_k, timings)
        known_ids = ad_ids[known]
        return ScoreResult(
            version,
            user_known,
            known_ids[order],
            pctr[order],
            ecpm[order],
            ad_ids[~known],
            timings,
            event,
            arm,
            experiment,
        )

    def candidates(self, version: ServingVersion, user: torch.Tensor, k: int, mode: str = "auto") -> np.ndarray:
        """Index rows of the k ads with the highest logit over the whole corpus.

        Args:
            mode: "exact" scores every ad; "ann" searches the version's FAISS indexes (`_ann_rows`)
                and rescores the union exactly; "auto" is exact below EXACT_BELOW ad heads
                (a brute-force pass is faster there) and ANN above.
        """
        heads = int(version.rows.vectors.shape[1])
        if mode == "auto":
            mode = "exact" if version.ann is None or len(version.ranked) * heads <= EXACT_BELOW else "ann"
        if mode == "exact":
            rows = version.live_rows
        else:
            if version.ann is None:
                raise VersionUnavailable("mode", f"version {version.version} has no FAISS index")

            found = self._ann_rows(version, user, k)
            # The ANN covers the base rows; drop removed/paused ones, add rows appended by deltas
            # (a mask test per hit: no pass over the corpus per request).
            appended = np.arange(version.ann_rows, version.n_rows)
            rows = np.union1d(found[version.live_mask[found]], appended[version.live_mask[appended]])
        # In cache-sized chunks: an exact pass over 10M ads would otherwise copy the whole matrix.
        logits = self.score_rows(version, user, rows).float().cpu().numpy()
        if k < len(rows):
            rows = rows[np.argpartition(-logits, k - 1)[:k]]
        return rows

    def _ann_rows(self, version: ServingVersion, user: torch.Tensor, k: int) -> np.ndarray:
        """Candidate base rows for the top k by MaxSim from the version's FAISS indexes (offline/ann.py).

        Two user heads with a pairs index: u_1 + u_2 against the heads and [u_1, u_2] against the
        pairs, which together hold the exact top k (up to the indexes' own approximation).
        Otherwise each user head and their sum against the heads, each over-fetching.
        """
        heads = int(version.rows.vectors.shape[1])
        queries = user.float().reshape(-1, user.shape[-1]).cpu().numpy()  # (H_u, p)
        searches = []  # (index, queries, FAISS ids per ad)
        if version.ann_pairs is not None and len(queries) == 2:
            searches.append((version.ann, queries.sum(axis=0, keepdims=True), heads))
            searches.append((version.ann_pairs, queries.reshape(1, -1), 2))
        else:
            if len(queries) > 1:  # also the heads' sum: the ads one head of which serves every user head
                queries = np.vstack([queries, queries.sum(axis=0, keepdims=True)])
            searches.append((version.ann, queries, heads))
        found = []
        for index, q, per_ad in searches:
            q = np.hstack([q, np.zeros((len(q), 1), np.float32)])  # MIPS -> L2: [u, 0]
            hits = _ann_search(index, q, min(index.ntotal, ANN_OVERSAMPLE * k * per_ad))
            found.append(hits[hits >= 0] // per_ad)
        return np.unique(np.concatenate(found))

    def retrieve(self, request: RetrieveRequest) -> ScoreResult:
        """Top-k ads of the whole corpus for the user, ranked by eCPM with their stored bids."""
        version = self._version()
        t0 = time.perf_counter()
        feats, user_known, event = self.user_features(request.user, request.unknown_user, version)
        user = self.encode_user(version, feats)
        t1 = time.perf_counter()
        rows = self.candidates(version, user, request.top_k, "exact" if request.exact else "auto")
        timings = {"user_tower": (t1 - t0) * 1e3, "retrieve": (time.perf_counter() - t1) * 1e3}
        order, pctr, ecpm = self._rank(version, user, rows, None, None, timings)
        ids = version.row_ids[rows]
        unknown = np.zeros(0, np.int64)
        return ScoreResult(version, user_known, ids[order], pctr[order], ecpm[order], unknown, timings, event)
