"""The REST API: one router per resource (``service.api.routes``), included here in the order of the docs."""

from fastapi import APIRouter

from service.api.routes import benchmarks, datasets, inferences, jobs, meta, recordings, rules

api_router = APIRouter()
for _module in (meta, jobs, rules, benchmarks, datasets, recordings, inferences):
    api_router.include_router(_module.router)
