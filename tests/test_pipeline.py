"""Pipelines: YAML defaults + overrides -> validated frozen objects, explain."""
import dataclasses

import pytest
import yaml

from busbar.faults import FaultClass
from busbar.pipeline import (DEFAULT_FILE, Backoff, PipelineError, build_pipeline, deep_merge, explain,
                             load_pipelines)

pytestmark = pytest.mark.pure


def test_default_pipeline_numbers():
    p = load_pipelines({})["default"]
    assert p.name == "default"
    assert p.max_attempts == 3 and p.max_key_rotations == 4
    assert p.deadline == 600
    assert (p.timeouts.connect, p.timeouts.first_byte, p.timeouts.idle) == (10, 60, 30)
    assert not p.legacy_open and p.dispatch.strategy is None
    assert p.rules.client.action == "return" and p.rules.client.penalty == "none"
    assert p.rules.context.action == "retry_larger_context" and p.rules.context.penalty == "none"
    assert p.rules.rate.penalty == "cool_key" and p.rules.rate.scope == "key_model"
    assert p.rules.rate.backoff == Backoff(1, 2, 300)
    assert p.rules.billing.penalty == "disable_key" and p.rules.billing.duration == 3600
    assert p.rules.auth.penalty == "disable_key" and p.rules.auth.duration == 86400 and p.rules.auth.alert
    assert p.rules.server.penalty == "breaker" and p.rules.server.action == "failover"
    assert p.rules[FaultClass.SERVER] is p.rules.server
    assert p.breaker.failures == 5 and p.breaker.open_for == 30 and p.breaker.ramp == 60


def test_pipelines_are_frozen():
    p = load_pipelines({})["default"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.deadline = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rules.rate.action = "return"


def test_overrides_merge_deeply_and_named_pipelines_inherit_user_default():
    config = {"pipelines": {
        "default": {"retry": {"max_attempts": 5}},
        "batch": {"deadline": 3600, "rules": {"rate": {"cool_key": {"backoff": {"max": 900}}}}},
    }}
    ps = load_pipelines(config)
    assert ps["default"].max_attempts == 5
    assert ps["default"].max_key_rotations == 4          # untouched sibling key
    batch = ps["batch"]
    assert batch.max_attempts == 5                       # from the user's default
    assert batch.deadline == 3600
    assert batch.rules.rate.backoff == Backoff(1, 2, 900)  # base/factor kept
    assert batch.rules.rate.penalty == "cool_key"


def test_pipeline_files_are_read_when_named(tmp_path):
    (tmp_path / "slow.yaml").write_text("deadline: 1200\ntimeouts: {first_byte: 300}\n")
    (tmp_path / "not-a-pipeline.yaml").write_text("providers: {}\n")   # ignored: nobody names it
    config = {"pools": {"p": {"pipeline": "slow", "members": []}},
              "pipelines": {"slow": {"timeouts": {"idle": 90}}}}
    ps = load_pipelines(config, tmp_path)
    assert set(ps) == {"default", "slow"}
    assert ps["slow"].deadline == 1200
    assert (ps["slow"].timeouts.first_byte, ps["slow"].timeouts.idle) == (300, 90)


def test_unknown_pipeline_name_is_an_error(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_pipelines({"pools": {"p": {"pipeline": "nope", "members": []}}}, tmp_path)
    assert err.value.path == "pipelines.nope"


@pytest.mark.parametrize("override, path", [
    ({"rules": {"rate": {"action": "explode"}}}, "pipelines.x.rules.rate.action"),
    ({"rules": {"rate": {"colour": "red"}}}, "pipelines.x.rules.rate.colour"),
    ({"retry": {"max_attempts": 0}}, "pipelines.x.retry.max_attempts"),
    ({"timeouts": {"idle": -1}}, "pipelines.x.timeouts.idle"),
    ({"dispatch": {"strategy": "fastest"}}, "pipelines.x.dispatch.strategy"),
    ({"received": {"checks": ["auth", "telepathy"]}}, "pipelines.x.received.checks.1"),
    ({"breaker": {"open_for": 600}}, "pipelines.x.breaker.open_for_max"),
    ({"rules": {"rate": {"cool_key": {"backoff": {"base": 10, "max": 5}}}}},
     "pipelines.x.rules.rate.cool_key.backoff.max"),
    ({"rulez": {}}, "pipelines.x.rulez"),
])
def test_errors_carry_a_yaml_path(override, path):
    with pytest.raises(PipelineError) as err:
        load_pipelines({"pipelines": {"x": override}})
    assert err.value.path == path, str(err.value)


def test_rules_are_data():
    ps = load_pipelines({"pipelines": {"strict": {"rules": {
        "rate": {"action": "return", "penalty": "none"},
        "server": {"penalty": "cool_key", "cool_key": {"scope": "key"}},
    }}}})
    strict = ps["strict"]
    assert strict.rules.rate.action == "return" and strict.rules.rate.penalty == "none"
    assert strict.rules.server.penalty == "cool_key" and strict.rules.server.scope == "key"
    assert strict.rules.server.backoff == Backoff()        # dataclass defaults fill in


def test_default_file_is_commented_and_round_trips():
    text = DEFAULT_FILE.read_text()
    assert text.count("#") > 40                 # every knob explained
    p = load_pipelines({})["default"]
    assert build_pipeline("again", p.as_dict()) == dataclasses.replace(p, name="again")
    assert yaml.safe_load(text)["retry"] == {"max_attempts": 3, "max_key_rotations": 4}


def test_deep_merge_replaces_lists_and_scalars():
    assert deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "d": None}) == \
        {"a": {"b": 1, "c": [3]}, "d": None}


def test_explain_lists_states_and_labelled_failover_edges():
    ps = load_pipelines({"pipelines": {"x": {"rules": {"server": {"action": "return"}}}}})
    text = explain(ps["default"])
    assert "received -> routed -> dispatched -> streaming -> done" in text
    for cls in ("client", "context", "rate", "billing", "auth", "server"):
        assert f"--{cls} fault-->" in text
    assert "3 member attempt(s) + 4 key rotation(s)" in text
    line = next(l for l in text.splitlines() if "--server fault-->" in l)
    assert "failing_over" in line
    line = next(l for l in explain(ps["x"]).splitlines() if "--server fault-->" in l)
    assert "failed" in line and "failing_over" not in line   # the chart's error terminal


def test_explain_lists_every_edge_of_the_lifecycle_table():
    """Every edge the driver can take is listed; resume's and hedging's only
    when the pipeline turns them on."""
    from busbar import lifecycle
    on = {"streaming": {"resume": {"max": 1, "max_added_ms": 10000}},
          "dispatch": {"hedge": {"after_ms": 800, "max": 1, "budget": 0.1}}}
    for config, optional in (({"pipelines": {"default": on}}, True), ({}, False)):
        text = explain(load_pipelines(config)["default"])
        rows = [line.split() for line in text.splitlines() if "-->" in line]
        drawn = {(row[0], row[row.index(next(w for w in row if w.endswith("-->"))) + 1]) for row in rows}
        labels = {" ".join(row[1:row.index(next(w for w in row if w.endswith("-->"))) + 1]) for row in rows}
        for (source, event), target in lifecycle.TRANSITIONS.items():
            if event == "cancelled":
                continue
            if event in ("resume", "hedge"):
                assert any(event in label for label in labels) is optional, (event, optional)
                continue
            assert (source, target) in drawn, (source, event, target)


def test_old_flat_penalty_parameters_still_work_with_a_warning():
    from busbar.deprecations import ConfigDeprecationWarning
    with pytest.warns(ConfigDeprecationWarning, match=r"pipelines.batch.rules.rate.backoff: .*rules.rate.cool_key.backoff"):
        ps = load_pipelines({"pipelines": {"batch": {"rules": {"rate": {"backoff": {"max": 900}},
                                                               "billing": {"duration": 60}}}}})
    batch = ps["batch"]
    assert batch.rules.rate.backoff == Backoff(1, 2, 900)      # the old spelling still wins over the default
    assert batch.rules.billing.duration == 60 and batch.rules.billing.penalty == "disable_key"
    assert ps["default"].rules.rate.backoff == Backoff(1, 2, 300)


def test_old_received_checks_and_dispatch_strategy_warn():
    from busbar.deprecations import ConfigDeprecationWarning
    with pytest.warns(ConfigDeprecationWarning) as caught:
        ps = load_pipelines({"pipelines": {"open": {"received": {"checks": ["max_body"]}},
                                           "closed": {"received": {"checks": ["auth", "max_body"]}},
                                           "rr": {"dispatch": {"strategy": "round_robin"}}}})
    text = " ".join(str(w.message) for w in caught)
    assert "pipelines.open.received.checks" in text and "auth: false" in text
    assert "pipelines.rr.dispatch.strategy" in text and "pools.NAME.strategy" in text
    assert ps["open"].legacy_open and not ps["closed"].legacy_open and not ps["default"].legacy_open
    assert ps["rr"].dispatch.strategy == "round_robin"


def test_as_dict_is_todays_spelling_and_round_trips_without_warnings(recwarn):
    p = load_pipelines({})["default"]
    data = p.as_dict()
    assert data["rules"]["rate"]["cool_key"]["backoff"] == {"base": 1.0, "factor": 2.0, "max": 300.0}
    assert data["rules"]["billing"]["disable_key"] == {"duration": 3600.0}
    assert "received" not in data and "strategy" not in data["dispatch"]
    assert build_pipeline("again", data) == dataclasses.replace(p, name="again")
    assert not [w for w in recwarn if "deprecated" in str(w.message)]
