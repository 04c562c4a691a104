"""Where a node's fleet client reports: `/etc/obelisk/fleet.json` on the signed root (the spec's `fleet`
section) and `fleet.json` on the node's config disk (provisioning: `obelisk boot --fleet-url`,
`--fleet-join-token`).

    {"format": "obelisk.fleet-node/1", "url": "https://HOST:PORT" | null, "interval": 60 | null,
     "ca": "/etc/obelisk/fleet-ca.pem" | null, "join_token": "fleet-token" | null}

The two are merged by `effective`: the config disk may name the service (`url`) and carry the join
token (a secret, never in the image: a file beside fleet.json, 0600); everything that decides whom
the node trusts (`ca`) and how often it reports (`interval`) comes from the signed root only. A
config disk that names another service therefore cannot make the node trust it: its certificate
must still chain to the CA on the root.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json

FORMAT = "obelisk.fleet-node/1"
IMAGE_PATH = "/etc/obelisk/fleet.json"  # on the signed root (build.node_files)
CA_PATH = "/etc/obelisk/fleet-ca.pem"  # fleet.ca on the root, when the spec gives one
DEFAULT_CA = "/etc/obelisk/ca.pem"  # signing.ca on the root
CONFIG_NAME = "fleet.json"  # on the config disk, beside agent.json
TOKEN_NAME = "fleet-token"  # the join token on the config disk (0600)
DEFAULT_INTERVAL = 60
FLEET_URL = r"https://[A-Za-z0-9._\[\]:-]+(:[0-9]{1,5})?/?"  # also the spec's fleet.url rule
_URL = re.compile(FLEET_URL)


@dataclass(frozen=True)
class FleetNode:
    url: str | None = None
    interval: int | None = None
    ca: str | None = None  # absolute path on the node
    join_token: str | None = None  # a file name beside the config disk's fleet.json

    def __post_init__(self) -> None:
        if self.url is not None and not _URL.fullmatch(self.url):
            raise ValueError(f"url: expected https://HOST[:PORT], got {self.url[:60]!r}")
        if self.interval is not None and not 5 <= self.interval <= 86400:
            raise ValueError(f"interval: {self.interval} out of range 5..86400")
        if self.ca is not None and not posixpath.isabs(self.ca):
            raise ValueError("ca: an absolute path on the node")
        if self.join_token is not None and (not self.join_token or "/" in self.join_token
                                            or self.join_token.startswith(".")):
            raise ValueError("join_token: a file name beside fleet.json")


def serialize(node: FleetNode) -> bytes:
    import json

    doc = {"format": FORMAT, "url": node.url, "interval": node.interval, "ca": node.ca,
           "join_token": node.join_token}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def parse(data: bytes, where: str) -> FleetNode:
    doc = load_json(data, where)
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        unknown = set(doc) - {"format", "url", "interval", "ca", "join_token"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
        for name in ("url", "ca", "join_token"):
            if doc.get(name) is not None and not isinstance(doc[name], str):
                raise ValueError(f"{name}: expected a string")
        interval = doc.get("interval")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int)):
            raise ValueError("interval: expected an integer")
        return FleetNode(url=doc.get("url"), interval=interval, ca=doc.get("ca"), join_token=doc.get("join_token"))
    except ValueError as exc:
        raise InputError(f"malformed {FORMAT}: {exc}", source=where) from None


@dataclass(frozen=True)
class Effective:
    """What the node's fleet client runs with."""

    url: str
    interval: int
    ca: str
    token_file: str | None  # absolute path of the join token, if provisioned


def effective(image: FleetNode | None, provisioned: FleetNode | None, config_dir: str) -> Effective | None:
    """The image's settings with the config disk's url and join token; None when neither names a service."""
    image = image or FleetNode()
    provisioned = provisioned or FleetNode()
    url = provisioned.url or image.url
    if url is None:
        return None
    token = posixpath.join(config_dir, provisioned.join_token) if provisioned.join_token else None
    return Effective(url=url, interval=image.interval or DEFAULT_INTERVAL, ca=image.ca or DEFAULT_CA,
                     token_file=token)
