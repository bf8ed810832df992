"""The HTTP part of the service: app factory, routes, dependencies, schemas, error handlers.

It translates HTTP into calls to the domain modules of `service` and back, and sends job
messages through `broker`. Nothing in the domain imports it.
"""
