"""dicomgw-client: read dicomgw research collections from a training loop.

``CollectionDataset`` is a map-style dataset of a collection version (volumes or 2D frames in real-world
values with their RAS affine, and the manifest row); ``Cache`` the verified, shared, size-limited cache
its objects come through. It needs no server package and never imports torch.
"""

from dicomgw_client.cache import Cache
from dicomgw_client.dataset import CollectionDataset, Skipped, default_cache_dir
from dicomgw_client.errors import (
    ArchiveError,
    ArchiveUnreachable,
    ClientError,
    GeometryError,
    IntegrityError,
)

__all__ = ["ArchiveError", "ArchiveUnreachable", "Cache", "ClientError", "CollectionDataset",
           "GeometryError", "IntegrityError", "Skipped", "default_cache_dir"]
