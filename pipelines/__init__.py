"""Pipelines shipped with busbar (a resource package: `busbar.pipelines`)."""
