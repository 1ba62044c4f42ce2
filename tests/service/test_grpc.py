"""The gRPC endpoint on a real server: parity with HTTP, health, reflection, errors, generated code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.proto import prerank_pb2, prerank_pb2_grpc
from tests.conftest import serve
from tools.procs import free_port

pytestmark = pytest.mark.integration
PROTO = Path(__file__).resolve().parents[2] / "service" / "proto"


def test_the_committed_modules_match_the_proto(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp_path}"]
    cmd += [f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTO / "prerank.proto")]
    subprocess.run(cmd, check=True)
    for name in ("prerank_pb2.py", "prerank_pb2.pyi", "prerank_pb2_grpc.py"):
        generated = (tmp_path / name).read_text()
        if name == "prerank_pb2_grpc.py":  # the committed one imports its sibling through the package
            generated = generated.replace("import prerank_pb2 as", "from service.proto import prerank_pb2 as")
        assert (PROTO / name).read_text() == generated, f"{name} is stale: regenerate (see prerank.proto)"


def test_grpc_scores_as_http_does_with_health_reflection_and_errors(store: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    ads = tiny.ad_ids[:60].tolist()
    bids = [1.0 + (i % 7) / 10 for i in range(60)]
    with serve(f"local:{store}", extra_args=("--grpc-port", str(port))) as url:
        http = httpx.post(
            url + "/prerank", json={"user": {"id": "4"}, "candidates": {"ad_ids": ads, "bids": bids}, "top_k": 25}
        ).json()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prerank_pb2_grpc.PrerankStub(channel)
            request = prerank_pb2.RankRequest(user=prerank_pb2.User(id="4"), ad_ids=ads, bids=bids, top_k=25)
            reply = stub.Rank(request, timeout=10)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="prerank.v1.Prerank"), timeout=5
            )
            listed = next(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
            with pytest.raises(grpc.RpcError) as negative:
                stub.Rank(prerank_pb2.RankRequest(user=prerank_pb2.User(id="4"), ad_ids=[1, -5]), timeout=5)
            with pytest.raises(grpc.RpcError) as unknown:
                stub.Rank(
                    prerank_pb2.RankRequest(user=prerank_pb2.User(id="nobody"), ad_ids=ads, reject_unknown_user=True),
                    timeout=5,
                )
            binary = stub.Rank(
                prerank_pb2.RankRequest(
                    user=prerank_pb2.User(id="4"),
                    ad_ids_le=np.asarray(ads, "<i8").tobytes(),
                    bids_le=np.asarray(bids, "<f4").tobytes(),
                    top_k=25,
                    binary_response=True,
                ),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as ragged:
                stub.Rank(prerank_pb2.RankRequest(user=prerank_pb2.User(id="4"), ad_ids_le=b"\x01\x02\x03"), timeout=5)
            features = prerank_pb2.User(features={"segment": prerank_pb2.FeatureValue(text="3")})
            by_features = stub.Rank(prerank_pb2.RankRequest(user=features, ad_ids=ads), timeout=10)
    assert list(reply.ad_ids) == http["ad_ids"]
    assert max(abs(a - b) for a, b in zip(reply.pctr, http["pctr"], strict=True)) < 1e-6
    assert max(abs(a - b) for a, b in zip(reply.ecpm, http["ecpm"], strict=True)) < 1e-5
    assert (reply.model_version, reply.index_version) == (http["model_version"], http["index_version"])
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    names = {s.name for s in listed.list_services_response.service}
    assert {"prerank.v1.Prerank", "grpc.health.v1.Health"} <= names
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates" in negative.value.details() and "negative" in negative.value.details()
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "user.id" in unknown.value.details()
    assert by_features.user_known and len(by_features.ad_ids) == len(ads)
    assert np.frombuffer(binary.ad_ids_le, "<i8").tolist() == http["ad_ids"] and not binary.ad_ids
    assert np.abs(np.frombuffer(binary.pctr_le, "<f4") - np.asarray(http["pctr"])).max() < 1e-6
    assert ragged.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ad_ids_le" in ragged.value.details()
