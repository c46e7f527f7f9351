"""NodeClient / SyncNodeClient staking and governance reads: paths, query parameters, and the
errors for 404, 400 and documents of the wrong shape (httpx.MockTransport)."""

from __future__ import annotations

import httpx
import pytest

from agent_world_client.client import BadResponse, NotFound, SyncNodeClient

VID = "ab" * 32


def test_paths_and_params():
    seen = []

    def handler(request):
        seen.append((request.url.path, dict(request.url.params)))
        keys = {"/v1/staking/validators": "validators", "/v1/staking/sets": "sets", "/v1/staking/unbonding": "queues",
                "/v1/governance/proposals": "proposals", "/v1/manifest/versions": "versions"}
        key = keys.get(request.url.path)
        return httpx.Response(200, json={key: []} if key else {"path": request.url.path})

    c = SyncNodeClient("http://x", transport=httpx.MockTransport(handler))
    assert c.validators() == {"validators": []}
    assert c.validator(VID) == {"path": f"/v1/staking/validators/{VID}"}
    assert c.validator_sets(from_epoch=3, limit=5) == {"sets": []}
    assert c.unbonding() == {"queues": []}
    assert c.proposals(status="voting", limit=7, before=9) == {"proposals": []}
    assert c.proposals() == {"proposals": []}
    assert c.proposal(4) == {"path": "/v1/governance/proposals/4"}
    assert c.manifest() == {"path": "/v1/manifest"}
    assert c.manifest_versions(limit=2, before=3) == {"versions": []}
    assert seen == [
        ("/v1/staking/validators", {}),
        (f"/v1/staking/validators/{VID}", {}),
        ("/v1/staking/sets", {"from_epoch": "3", "limit": "5"}),
        ("/v1/staking/unbonding", {}),
        ("/v1/governance/proposals", {"status": "voting", "limit": "7", "before": "9"}),
        ("/v1/governance/proposals", {"limit": "50"}),
        ("/v1/governance/proposals/4", {}),
        ("/v1/manifest", {}),
        ("/v1/manifest/versions", {"limit": "2", "before": "3"}),
    ]


def test_errors_name_what_was_missing_or_wrong():
    def handler(request):
        path = request.url.path
        if path.startswith("/v1/staking/validators/"):
            return httpx.Response(404, json={"error": "no validator x", "code": "unknown_validator"})
        if path == "/v1/governance/proposals":
            return httpx.Response(400, json={"error": "query parameter limit must be between 1 and 200", "code": "bad_query"})
        if path == "/v1/staking/validators":
            return httpx.Response(200, json={"validators": {}})  # not a list
        return httpx.Response(200, json=[1, 2])

    c = SyncNodeClient("http://x", transport=httpx.MockTransport(handler))
    with pytest.raises(NotFound, match="no validator x"):
        c.validator(VID)
    with pytest.raises(BadResponse, match="between 1 and 200") as bad:
        c.proposals(limit=500)
    assert bad.value.status == 400
    with pytest.raises(BadResponse, match="'validators' list"):
        c.validators()
    with pytest.raises(BadResponse, match="an object"):
        c.manifest()
