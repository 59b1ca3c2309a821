"""`dicomgw storage report`: what the archive receives, what each store keeps in which form, the ratio,
and what that costs per month at the prices configured (DICOMGW_COST_*)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from dicomgw.config import CostSettings, Settings

TB = 10**12


def report(status: dict[str, Any], costs: CostSettings) -> dict[str, Any]:
    """The report of an ``integrity_status`` snapshot's storage section, with costs."""
    storage = status["storage"]
    received = int(storage["received_bytes"])
    stores: dict[str, Any] = {}
    monthly = verbatim_monthly = 0.0
    prices = {"primary": costs.primary_per_tb_month, "cold": costs.cold_per_tb_month,
              "replica": costs.replica_per_tb_month}
    for name, price in prices.items():
        forms = storage[name]
        if (name == "replica" and not status["replica"]["enabled"]) or (name == "cold" and not forms):
            continue
        stored = sum(f["bytes"] for f in forms.values())
        original = sum(f["original_bytes"] for f in forms.values())
        cost, verbatim_cost = stored / TB * price, original / TB * price
        monthly += cost
        verbatim_monthly += verbatim_cost
        stores[name] = {"originals": sum(f["originals"] for f in forms.values()), "original_bytes": original,
                        "stored_bytes": stored, "ratio": _ratio(original, stored), "forms": forms,
                        "per_tb_month": price, "monthly": cost,
                        "monthly_if_verbatim": verbatim_cost}
    codecs = {codec: {**row, "ratio": _ratio(row["original_bytes"], row["bytes"])}
              for codec, row in storage["codecs"].items()}
    return {"originals": storage["originals"], "received_bytes": received, "stores": stores,
            "codecs": codecs, "currency": costs.currency, "monthly": monthly,
            "monthly_if_verbatim": verbatim_monthly,
            "monthly_per_tb_received": monthly / (received / TB) if received else None}


def _ratio(original: int, stored: int) -> float | None:
    return round(original / stored, 3) if stored else None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def lines(r: dict[str, Any]) -> list[str]:
    out = [f"originals: {r['originals']}, received {_size(r['received_bytes'])} (kept byte for byte)"]
    for name, store in r["stores"].items():
        forms = ", ".join(f"{form} {row['originals']} ({_size(row['bytes'])})"
                          for form, row in sorted(store["forms"].items()))
        ratio = f"{store['ratio']:.2f}x" if store["ratio"] else "-"
        out.append(f"{name}: stores {_size(store['stored_bytes'])} for {_size(store['original_bytes'])} "
                   f"of originals, ratio {ratio}; {forms or 'empty'}")
        out.append(f"  {store['monthly']:.2f} {r['currency']}/month at {store['per_tb_month']:g} "
                   f"per TB-month ({store['monthly_if_verbatim']:.2f} if kept verbatim)")
    for codec, row in sorted(r["codecs"].items()):
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        out.append(f"  compact {codec}: {row['originals']} originals, {_size(row['original_bytes'])} -> "
                   f"{_size(row['bytes'])} ({ratio})")
    per_tb = r["monthly_per_tb_received"]
    out.append(f"total: {r['monthly']:.2f} {r['currency']}/month "
               f"({r['monthly_if_verbatim']:.2f} if kept verbatim)"
               + (f"; {per_tb:.2f} {r['currency']} per TB received per month" if per_tb is not None else ""))
    return out


def main(args: argparse.Namespace) -> int:
    from dicomgw.runtime import open_runtime
    from dicomgw.status import integrity_status

    async def go() -> dict[str, Any]:
        settings = Settings()
        async with open_runtime(settings) as runtime:
            status = await integrity_status(runtime.index, replica_enabled=runtime.replica is not None)
        return report(status, settings.cost)

    result = asyncio.run(go())
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines(result)))
    return 0


def add_parser(sub: Any) -> None:
    storage = sub.add_parser("storage", help="what the archive keeps, in which form, and what it costs")
    actions = storage.add_subparsers(dest="action", required=True)
    parser = actions.add_parser("report", help="bytes received and stored per store and form, the ratio, "
                                "and the monthly cost at DICOMGW_COST_* prices")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=main)
