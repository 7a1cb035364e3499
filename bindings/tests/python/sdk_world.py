"""What the Python tests share: the SDK's configuration for one of the routers that
tests/tests/bindings.rs started (its port in the environment variable `port_var`)."""

import os

import gateway_sdk as sdk


def config(port_var, **kw):
    with open(os.environ["SDK_CA_PEM"]) as f:
        ca = f.read()
    return sdk.SdkConfig(
        router_domain="router.test",
        router_port=int(os.environ[port_var]),
        router_https=False,
        bootstrap={"router.test": ["127.0.0.1"]},
        local_fallback=False,
        ipv6=False,
        extra_roots_pem=ca,
        router_attempt_timeout_ms=10_000,
        router_budget_ms=20_000,
        deadline_ms=30_000,
        **kw,
    )
