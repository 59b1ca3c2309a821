"""query endpoints (being written)."""

from fastapi import APIRouter

router = APIRouter()
