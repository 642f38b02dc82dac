"""JSON Schemas shipped with busbar (a resource package: `busbar.schemas`)."""
