"""The ``dicomgw`` command: ``serve`` the embedded gateway, ``upload`` folders of DICOM files."""

from __future__ import annotations

import argparse
import logging
import sys

from dicomgw.config import Settings
from dicomgw_gateway import upload


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dicomgw_gateway.app import create_app

    settings = Settings()
    if args.port is not None:
        settings.port = args.port
    if args.host is not None:
        settings.host = args.host
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}{settings.http.base_path}"
    print(f"dicomgw serving DICOMweb at {url}  (data in {settings.data_dir.resolve()}; Ctrl-C stops)",
          flush=True)
    # uvicorn stops on SIGINT/SIGTERM after in-flight requests finish; the lifespan then closes the
    # index and the store, so nothing is left half-written.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=30, access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomgw", description="DICOMweb gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the embedded gateway (STOW/QIDO/WADO in one process)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None, help="default: $PORT or 8080")
    serve.set_defaults(func=_serve)
    upload.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
