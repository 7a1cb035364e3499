#!/usr/bin/env python3
"""Writes the MaxMind-format ASN databases the router's ISP tests read.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install mmdb-writer
    /tmp/v/bin/python scripts/make-test-mmdb.py router-server/tests/data

Each database is an ASN edition (GeoLite2-ASN's layout): networks mapped to
`autonomous_system_number` and `autonomous_system_organization`. The files are
committed; this script is how they were made and how to make them again.
"""

import sys
from pathlib import Path

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

# (file, [(network, ASN, organization)]): "b" moves 127.21.0.0/16 from AS9808 to
# AS4134, so a test swapping the files sees one network change ISP. "a" stores ASNs
# as uint32, as MaxMind's own files do; "b" lets the writer pick the smallest type
# (uint16), as other writers may: the router reads both.
WIDE = {"asn-a.mmdb"}
DATABASES = {
    "asn-a.mmdb": [
        ("127.20.0.0/16", 4134, "Chinanet"),
        ("127.21.0.0/16", 9808, "China Mobile"),
        ("2001:db8:20::/48", 4134, "Chinanet"),
        ("2001:db8:21::/48", 9808, "China Mobile"),
    ],
    "asn-b.mmdb": [
        ("127.20.0.0/16", 4134, "Chinanet"),
        ("127.21.0.0/16", 4134, "Chinanet"),
        ("2001:db8:20::/48", 4134, "Chinanet"),
        ("2001:db8:21::/48", 4134, "Chinanet"),
    ],
}


def main(out: Path) -> None:
    for name, networks in DATABASES.items():
        w = MMDBWriter(
            ip_version=6,
            ipv4_compatible=True,
            database_type="GeoLite2-ASN",
            languages=["en"],
            description={"en": "gateway-router ISP test database"},
        )
        for net, asn, org in networks:
            w.insert_network(
                IPSet([net]),
                {
                    "autonomous_system_number": MmdbU32(asn) if name in WIDE else asn,
                    "autonomous_system_organization": org,
                },
            )
        w.to_db_file(str(out / name))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
