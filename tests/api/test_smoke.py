from tests.support import install_store


async def test_install_then_view(client, neto, auth):
    got = await install_store(client, neto)
    r = await client.get(f"/installs/{got['store_id']}", headers=auth("installs:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "active"
    assert body["user"]["email"] == "owner@shop.example.com"
