"""``dicomgw partitions create|list|policy``: separate archives behind one gateway (one per hospital).

A partition's DICOMweb root is ``{root}/partitions/{name}``: give it to a PACS's forwarding rule, OHIF
or dicomweb-client as it is. Credentials see a partition through a scope for it (``dicomgw keys create
hospital-a-pacs --scope dicom.write:hospital-a``) or through the global ``dicom.read``/``dicom.write``.
"""

from __future__ import annotations

import argparse

from dicomgw_gateway.adminclient import Gateway, add_connection_args, admin_list


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("partitions", help="create and list partitions (one archive per hospital)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an archive partition")
    create.add_argument("name", help="lower-case letters, digits and inner hyphens (at most 63)")
    create.add_argument("--description", default="")
    add_connection_args(create)
    create.set_defaults(func=_create)
    policy = actions.add_parser("policy", help="set a partition's storage lifecycle (seconds after "
                                "ingest; negative: never; 'default': the deployment's setting)")
    policy.add_argument("name")
    policy.add_argument("--compact-after", metavar="SECONDS", help="keep originals compact after this age")
    policy.add_argument("--cold-after", metavar="SECONDS",
                        help="move originals to the cold tier after this age")
    add_connection_args(policy)
    policy.set_defaults(func=_policy)
    listing = actions.add_parser("list", help="list every partition")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_args(listing)
    listing.set_defaults(func=_list)


def _create(args: argparse.Namespace) -> int:
    with Gateway(args.url, args.token) as gateway:
        info = gateway.admin("POST", "partitions",
                             json={"name": args.name, "description": args.description})
        print(f"created partition {info['name']}; its DICOMweb root is "
              f"{gateway.root}/partitions/{info['name']}")
    return 0


def _seconds(value: str) -> float | None:
    return None if value == "default" else float(value)


def _policy(args: argparse.Namespace) -> int:
    body = {member: _seconds(value) for member, value in (("compactAfterSeconds", args.compact_after),
                                                          ("coldAfterSeconds", args.cold_after))
            if value is not None}
    with Gateway(args.url, args.token) as gateway:
        info = gateway.admin("PATCH", f"partitions/{args.name}", json=body)
    print(f"partition {info['name']}: compact after {info['compactAfterSeconds']}, "
          f"cold after {info['coldAfterSeconds']} (None: the deployment's setting)")
    return 0


def _list(args: argparse.Namespace) -> int:
    partitions = admin_list(args, "partitions")
    if partitions is None:
        return 0
    width = max([len("NAME"), *(len(p["name"]) for p in partitions)]) + 2
    print(f"{'NAME':<{width}}{'KIND':<12}{'ACCESS':<12}{'CREATED':<21}DESCRIPTION")
    for p in partitions:
        access = "read-only" if p["readOnly"] else "read-write"
        created = (p["created"] or "")[:19].replace("T", " ")
        print(f"{p['name']:<{width}}{p['kind']:<12}{access:<12}{created:<21}{p['description']}")
    return 0
