"""POST /devices/query through the official SDK: paging over devices and devices.modules."""

import pytest
from azure.iot.hub.models import DeviceCapabilities, ExportImportDevice, QuerySpecification
from msrest.exceptions import HttpOperationError

from support import unique

# Values the swagger and the SDK document for x-ms-item-type.
ITEM_TYPES = {"unknown", "twin", "deviceJob", "jobResponse", "raw", "enrollment", "enrollmentGroup", "deviceRegistration"}


@pytest.fixture(scope="module")
def fleet(hub):
    """Seven tagged devices of one run: three edge devices and four plain ones."""
    rm = hub.registry_manager()
    run = unique("q")
    ids = [f"{run}-{n}" for n in range(7)]
    result = rm.bulk_create_or_update_devices([
        ExportImportDevice(
            id=device_id, import_mode="create", status="enabled",
            capabilities=DeviceCapabilities(iot_edge=n < 3),
            tags={"run": run, "index": n, "kind": "edge" if n < 3 else "plain"},
        )
        for n, device_id in enumerate(ids)
    ])
    assert result.is_successful is True, [e.as_dict() for e in result.errors or []]
    return {"run": run, "ids": ids, "edge_ids": ids[:3]}


def all_pages(rm, sql, page_size):
    """Pages of a query, following continuation tokens; each page is (items, type, token)."""
    pages, token = [], None
    while True:
        page = rm.query_iot_hub(QuerySpecification(query=sql), token, page_size)
        pages.append(page)
        token = page.continuation_token
        if token is None:
            return pages
        assert len(pages) < 50, "the continuation token never ends"


def test_device_query_pages_with_continuation(hub, fleet):
    rm = hub.registry_manager()
    sql = f"SELECT * FROM devices WHERE tags.run = '{fleet['run']}'"
    pages = all_pages(rm, sql, 3)
    assert [len(p.items) for p in pages] == [3, 3, 1]
    # A continuation token on every page but the last (Node decides by its presence).
    assert all(isinstance(p.continuation_token, str) and p.continuation_token for p in pages[:-1])
    assert pages[-1].continuation_token is None
    assert {p.type for p in pages} == {"twin"}
    twins = [t for p in pages for t in p.items]
    assert sorted(t.device_id for t in twins) == sorted(fleet["ids"])
    for twin in twins:
        n = int(twin.device_id.rsplit("-", 1)[1])
        assert twin.module_id is None
        assert twin.tags == {"run": fleet["run"], "index": n, "kind": "edge" if n < 3 else "plain"}
        assert twin.capabilities.iot_edge is (n < 3)
        assert twin.status == "enabled"
        assert isinstance(twin.etag, str) and twin.etag
        assert isinstance(twin.version, int)
        assert isinstance(twin.properties.desired["$version"], int)

    # The same query without a page size returns everything at once.
    single = rm.query_iot_hub(QuerySpecification(query=sql))
    assert sorted(t.device_id for t in single.items) == sorted(fleet["ids"])
    assert single.continuation_token is None


def test_filters_on_tags_capabilities_and_functions(hub, fleet):
    rm = hub.registry_manager()
    run = fleet["run"]
    cases = {
        f"SELECT * FROM devices WHERE tags.run = '{run}' AND capabilities.iotEdge = true": fleet["edge_ids"],
        f"select * from devices where tags.run = '{run}' and tags.index >= 5": fleet["ids"][5:],
        f"SELECT * FROM devices WHERE tags.run = '{run}' AND (tags.index = 0 OR tags.index IN [4, 6])":
            [fleet["ids"][i] for i in (0, 4, 6)],
        f"SELECT * FROM devices WHERE tags.run = '{run}' AND NOT tags.kind = 'edge'": fleet["ids"][3:],
        f"SELECT * FROM devices WHERE STARTSWITH(deviceId, '{run}-') AND tags.index < 2": fleet["ids"][:2],
        f"SELECT * FROM devices WHERE tags.run = '{run}' AND IS_DEFINED(tags.missing)": [],
        f"SELECT * FROM devices WHERE deviceId IN ['{fleet['ids'][1]}', 'nobody']": [fleet["ids"][1]],
    }
    for sql, expected in cases.items():
        items = [t for p in all_pages(rm, sql, 100) for t in p.items]
        assert sorted(t.device_id for t in items) == sorted(expected), sql


def test_module_query_pages(hub, fleet):
    rm = hub.registry_manager()
    quoted = ", ".join(f"'{d}'" for d in fleet["edge_ids"])
    sql = f"SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN [{quoted}]"
    pages = all_pages(rm, sql, 2)
    assert [len(p.items) for p in pages] == [2, 1]
    assert pages[-1].continuation_token is None
    assert {p.type for p in pages} == {"twin"}
    twins = [t for p in pages for t in p.items]
    assert sorted(t.device_id for t in twins) == sorted(fleet["edge_ids"])
    assert {t.module_id for t in twins} == {"$edgeAgent"}

    both = [t for p in all_pages(rm, f"SELECT * FROM devices.modules WHERE deviceId IN [{quoted}]", 4) for t in p.items]
    assert sorted((t.device_id, t.module_id) for t in both) == sorted(
        (d, m) for d in fleet["edge_ids"] for m in ("$edgeAgent", "$edgeHub")
    )


def test_projection_and_count_rows(hub, fleet):
    """Projected rows are raw JSON; the SDK would squeeze them into Twin, so read them raw."""
    run = fleet["run"]
    response = hub.request(
        "POST", "/devices/query",
        json={"query": f"SELECT deviceId, tags.index AS position FROM devices WHERE tags.run = '{run}' AND tags.index < 2"},
        headers={"x-ms-max-item-count": "10"},
    )
    assert response.status_code == 200, response.text
    assert response.headers.get("x-ms-item-type") in ITEM_TYPES
    assert "x-ms-continuation" not in response.headers
    assert sorted(response.json(), key=lambda r: r["position"]) == [
        {"deviceId": fleet["ids"][0], "position": 0},
        {"deviceId": fleet["ids"][1], "position": 1},
    ]
    count = hub.request("POST", "/devices/query",
                        json={"query": f"SELECT COUNT() AS n FROM devices WHERE tags.run = '{run}'"})
    assert count.status_code == 200, count.text
    assert count.json() == [{"n": 7}]


def test_invalid_query_is_a_bad_request(hub):
    rm = hub.registry_manager()
    with pytest.raises(HttpOperationError) as bad:
        rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE"))
    assert bad.value.response.status_code == 400
    assert bad.value.response.headers.get("iothub-errorcode")
