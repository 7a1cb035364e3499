"""The generated Python bindings against a real router and real gateways.

Run by tests/tests/bindings.rs, which starts etcd, the routers and the gateways and
passes their addresses in the environment:

  SDK_ROUTER_PORT    a router whose fleet has a plain echo gateway (least loaded, no
                     domain) and a TLS gateway (domain gw-tls.test)
  SDK_FULL_PORT      a router whose only gateway is full (503 with Retry-After)
  SDK_BADCERT_PORT   a router whose only gateway's certificate names another host
  SDK_CA_PEM         the test CA (PEM file)
  SDK_ALPN           the ALPN protocol the TLS gateway accepts

The module directory holding gateway_sdk.py and libgateway_sdk.so is on sys.path.
"""

import asyncio
import ipaddress
import os
import socket

import gateway_sdk as sdk
from sdk_world import config


async def plain_and_tls():
    client = sdk.GatewayClient(config("SDK_ROUTER_PORT", tls_alpn=[os.environ["SDK_ALPN"]]))
    g = await client.gateways()
    assert g.source == "router", g.source
    assert [x.id for x in g.gateways] == ["gw-plain", "gw-tls"], g.gateways

    conn = await client.connect()
    assert conn.gateway().id == "gw-plain"
    assert not conn.is_tls()
    await conn.write(b"ping")
    assert await conn.read(64) == b"ping"
    await conn.shutdown()

    tls = await client.connect_tls()
    assert tls.gateway().id == "gw-tls", "gw-plain has no domain: refused for TLS"
    assert tls.is_tls()
    assert tls.alpn() == os.environ["SDK_ALPN"], tls.alpn()
    await tls.write(b"over tls")
    got = b""
    while len(got) < 8:
        got += await tls.read(64)
    assert got == b"over tls"
    await tls.shutdown()

    # The file descriptor of a plain connection belongs to the app afterwards.
    conn = await client.connect()
    fd = conn.take_fd()
    s = socket.socket(fileno=fd)
    s.sendall(b"fd")
    assert s.recv(2) == b"fd"
    s.close()
    try:
        tls = await client.connect_tls()
        tls.take_fd()
        raise AssertionError("a TLS connection gave a file descriptor")
    except sdk.SdkError.Io as e:
        assert "TLS" in e.detail, e.detail

    # A migration never lands on the gateway being left.
    conn = await client.connect()
    moved = await client.migrate(conn, 1)
    assert moved.gateway().id == "gw-tls", moved.gateway().id

    # The resolver for the app's own HTTP stack.
    ips = [ipaddress.ip_address(ip) for ip in client.lookup("router.test")]
    assert ips == [ipaddress.ip_address("127.0.0.1")], ips
    await client.prefetch(["router.test"])
    client.network_changed()


async def refusal_with_retry_after():
    client = sdk.GatewayClient(config("SDK_FULL_PORT"))
    try:
        await client.connect()
        raise AssertionError("a full fleet connected")
    except sdk.SdkError.Refused as e:
        assert e.retry_after_ms is not None and e.retry_after_ms > 0, e
        assert "no_gateways" in e.detail, e.detail


async def tls_cause_chain():
    client = sdk.GatewayClient(config("SDK_BADCERT_PORT"))
    try:
        await client.connect_tls()
        raise AssertionError("a certificate for another name was accepted")
    except sdk.SdkError.Connect as e:
        assert any("not valid for name" in c for c in e.causes), e.causes
        assert e.retry_after_ms is None


def bad_config():
    try:
        sdk.GatewayClient(sdk.SdkConfig(router_domain="router.test", providers=[
            sdk.ProviderConfig(kind=sdk.ProviderKind.ALIBABA, addrs=["not an address"], account="1"),
        ]))
        raise AssertionError("a bad provider address was accepted")
    except sdk.SdkError.Config as e:
        assert "not an IP:port" in e.detail, e.detail


async def main():
    bad_config()
    await plain_and_tls()
    await refusal_with_retry_after()
    await tls_cause_chain()
    print("python bindings: ok")


asyncio.run(main())
