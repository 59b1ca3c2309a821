"""Who is asking and what they may do: OIDC access tokens and API keys turned into a Principal.

Nothing below the web layer knows about tokens; routes declare the scope they need
(``dicomgw.web.security``) and read the Principal from the request.
"""

from dicomgw.auth.authenticator import Authenticator
from dicomgw.auth.principal import ADMIN, ALL_SCOPES, READ, WRITE, Principal

__all__ = ["ADMIN", "ALL_SCOPES", "READ", "WRITE", "Authenticator", "Principal"]
