"""dicomgw-client: read dicomgw research collections from a training loop, or pull them to a folder.

``CollectionDataset`` is a map-style dataset of a collection version (volumes or 2D frames in real-world
values with their RAS affine, and the manifest row); ``Cache`` the verified, shared, size-limited cache
its objects come through. ``dicomgw_client.pull.pull`` downloads a version into a folder, verified
and resumable, with a manifest of the local files (the ``dicomgw-client pull`` command). It needs no
server package and never imports torch.
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
