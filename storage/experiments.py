"""A/B experiments and shadow scoring, as configured in the store.

An experiment splits users between arms, each a published version (or `live`, which follows the
pointer), by a salted hash of the user id: sticky (a user stays in their arm for as long as the
salt stays) and even (each arm gets its share of users). A shadow is a candidate version that
scores a sample of live requests off the response path. Both are JSON under one key each and
announced on the events channel, so every replica applies them; `prerank experiment` and the
admin API write them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.redis_keys import RedisKeys

__all__ = [
    "Arm",
    "Experiment",
    "ShadowConfig",
    "assign_arm",
    "clear_config",
    "clear_local_config",
    "read_config",
    "read_local_config",
    "write_config",
    "write_local_config",
]

VersionRef = str  # "live" or a published version name


def _check_version(value: str, where: str) -> None:
    if value != "live" and not (value.startswith("v") and value[1:].isdigit() and len(value) <= 21):
        raise ValueError(f"{where} must be 'live' or a published version name such as v000003, got {value!r}")


class Arm(BaseModel):
    """One arm: a name, the version that scores it and its share of users."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,32}$")
    version: VersionRef = Field(..., description="'live' (follows the pointer) or a published version")
    share: float = Field(..., gt=0, le=1)

    @model_validator(mode="after")
    def _version(self) -> Arm:
        _check_version(self.version, "version")
        return self


class Experiment(BaseModel):
    """Arms with shares summing to 1 and the salt of the user hash."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    salt: str = Field(..., min_length=1, max_length=64)
    arms: list[Arm] = Field(..., min_length=2, max_length=8)

    @model_validator(mode="after")
    def _arms(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arm shares must sum to 1, got {total:g}")
        return self

    def bounds(self) -> list[float]:
        """Upper bound of each arm's slice of [0, 1)."""
        out, acc = [], 0.0
        for arm in self.arms:
            acc += arm.share
            out.append(acc)
        out[-1] = 1.0
        return out


class ShadowConfig(BaseModel):
    """A candidate version scoring a sample of live /prerank requests off the response path."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: VersionRef = Field(..., description="the candidate: a published version (or 'live', for a self-check)")
    sample: float = Field(0.1, gt=0, le=1, description="fraction of live requests offered to the candidate")

    @model_validator(mode="after")
    def _version(self) -> ShadowConfig:
        _check_version(self.version, "version")
        return self


def assign_arm(experiment: Experiment, user_id: str, bounds: list[float] | None = None) -> int:
    """The arm index of a user: blake2b(salt:user) as a uniform number in [0, 1), cut by the shares."""
    digest = hashlib.blake2b(f"{experiment.salt}:{user_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    for i, bound in enumerate(bounds or experiment.bounds()):
        if u < bound:
            return i
    return len(experiment.arms) - 1


def _key(keys: RedisKeys, kind: str) -> str:
    return keys.experiment if kind == "experiment" else keys.shadow


def write_config(client: Any, keys: RedisKeys, config: Experiment | ShadowConfig) -> None:
    """Stores an experiment or shadow config and tells every replica."""
    kind = "experiment" if isinstance(config, Experiment) else "shadow"
    with client.pipeline(transaction=True) as pipe:
        pipe.set(_key(keys, kind), config.model_dump_json())
        pipe.publish(keys.events, kind)
        pipe.execute()


def clear_config(client: Any, keys: RedisKeys, kind: str) -> bool:
    """Ends the experiment (or the shadow); True if there was one."""
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(_key(keys, kind))
        pipe.publish(keys.events, kind)
        deleted, _ = pipe.execute()
    return bool(deleted)


LOCAL_FILES = {"experiment": "experiment.json", "shadow": "shadow.json"}


def write_local_config(root: Path, config: Experiment | ShadowConfig) -> None:
    """A local store's config file, replaced atomically."""
    kind = "experiment" if isinstance(config, Experiment) else "shadow"
    tmp = root / f".{LOCAL_FILES[kind]}.{os.getpid()}"
    tmp.write_text(config.model_dump_json())
    os.replace(tmp, root / LOCAL_FILES[kind])


def clear_local_config(root: Path, kind: str) -> bool:
    try:
        (root / LOCAL_FILES[kind]).unlink()
    except FileNotFoundError:
        return False
    return True


def read_local_config(root: Path) -> tuple[Experiment | None, ShadowConfig | None]:
    def one(name: str) -> str | None:
        try:
            return (root / name).read_text()
        except FileNotFoundError:
            return None

    raw_experiment, raw_shadow = one(LOCAL_FILES["experiment"]), one(LOCAL_FILES["shadow"])
    experiment = Experiment.model_validate(json.loads(raw_experiment)) if raw_experiment else None
    shadow = ShadowConfig.model_validate(json.loads(raw_shadow)) if raw_shadow else None
    return experiment, shadow


def read_config(client: Any, keys: RedisKeys) -> tuple[Experiment | None, ShadowConfig | None]:
    """Both configs in one round trip. ValueError for a stored config that does not validate."""
    raw_experiment, raw_shadow = client.mget([keys.experiment, keys.shadow])
    experiment = Experiment.model_validate(json.loads(raw_experiment)) if raw_experiment else None
    shadow = ShadowConfig.model_validate(json.loads(raw_shadow)) if raw_shadow else None
    return experiment, shadow
