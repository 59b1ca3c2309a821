"""``python -m dicomgw_client``: the ``dicomgw-client`` command."""

import sys

from dicomgw_client.cli import main

sys.exit(main())
