"""The campaign form of the deployed flows (smscast/form.py), without a server: the JSON schema Prefect's UI
renders (groups, titles, required fields, no `None` toggles, no regex), the CampaignSpec it builds, its
errors in words, the dry-run default, deployments/prefect.yaml's parameters, and bootstrap's schedule notice."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import build_error_obj, validate
from pydantic import ValidationError

from smscast.campaign import PROVIDER_NAMES, CampaignSpec
from smscast.flows.deployed import adhoc_campaign, campaign_from_file, nightly_campaign
from smscast.form import OFF_FORM, CampaignForm

ROOT = Path(__file__).resolve().parent.parent
MINIMAL: dict[str, Any] = {
    "campaign_id": "spring-1",
    "recipients": {"source": "s3://b/in/spring.csv"},
    "provider": {"name": "sandbox"},
    "advanced": {"results": "s3://b/results"},
}


def ui_schema() -> dict[str, Any]:
    """What `prefect deploy` stores as the ad-hoc deployment's parameter schema, and the UI renders."""
    return parameter_schema(adhoc_campaign).model_dump_for_openapi()


def walk(node: Any) -> list[dict[str, Any]]:
    """Every schema object in a JSON schema."""
    if isinstance(node, dict):
        return [node, *(n for v in node.values() for n in walk(v))]
    if isinstance(node, list):
        return [n for v in node for n in walk(v)]
    return []


def labels(schema: dict[str, Any], definition: str) -> list[tuple[str, bool]]:
    """(title, required) of a form group's fields in the order the UI shows them (by `position`)."""
    group = schema["definitions"][definition]
    props = sorted(group["properties"].items(), key=lambda kv: kv[1]["position"])
    return [(resolve(schema, p)["title"], name in group.get("required", [])) for name, p in props]


def resolve(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """A property as the UI reads it: a `$ref`'s definition, overridden by the property's own keys."""
    ref = prop.get("$ref")
    return {**schema["definitions"][ref.rsplit("/", 1)[1]], **prop} if ref else prop


def test_the_form_is_grouped_with_required_fields_marked() -> None:
    schema = ui_schema()
    assert schema["required"] == ["campaign"]
    assert schema["properties"]["campaign"]["description"]  # from the flow's docstring
    assert labels(schema, "CampaignForm") == [
        ("Campaign id", True),
        ("Dry run", False),
        ("Recipients", True),
        ("Message", False),
        ("Provider", True),
        ("Limits", False),
        ("Contact policy", False),
        ("Advanced", True),
    ]
    assert [t for t, _ in labels(schema, "Policy")] == [
        "Messages per recipient",
        "Frequency window",
        "Quiet hours",
        "Only these countries",
        "Never these countries",
        "Price list",
        "Spend cap",
    ]
    assert labels(schema, "Recipients") == [
        ("Source", True),
        ("SQL query", False),
        ("Default country", False),
        ("Do not message (opt-out lists)", False),
        ("Opt-out SQL query", False),
    ]
    assert labels(schema, "Message")[0] == ("Message body", False)
    assert labels(schema, "Provider") == [
        ("Provider", True),
        ("Sender", False),
        ("Fallback provider", False),
        ("Fallback sender", False),
    ]
    assert [t for t, _ in labels(schema, "Limits")] == [
        "Requests per second",
        "Concurrent requests",
        "Rows per request",
        "Request timeout (seconds)",
        "Circuit breaker: failure share",
        "Circuit breaker: rows",
    ]
    assert labels(schema, "Advanced")[0] == ("Results location", True)
    provider = schema["definitions"]["Provider"]["properties"]["name"]
    assert provider["enum"] == list(PROVIDER_NAMES) and "default" not in provider
    assert schema["definitions"]["CampaignForm"]["properties"]["dry_run"]["default"] is True
    # Every field and group says what it is for.
    for definition in schema["definitions"].values():
        assert definition["description"]
        for name, prop in definition["properties"].items():
            shown = resolve(schema, prop)
            assert shown["title"] and shown["description"], name


def test_no_none_toggles_no_regex_and_no_internal_knobs_on_the_form() -> None:
    schema = ui_schema()
    nodes = walk(schema)
    # `X | None` renders as a choice between X and "Property is type 'None'": none on the form.
    assert not [n for n in nodes if "anyOf" in n or "oneOf" in n or n.get("type") == "null"]
    # A pattern would be shown to the person as the regex itself (jsonschema's words for a mismatch).
    assert not [n for n in nodes if "pattern" in n]
    fields = {name for d in schema["definitions"].values() for name in d["properties"]}
    assert not fields & {"base_url", "shard_batches", "attempt"}
    # Optional text is a plain text box that starts empty; optional numbers a plain number box, empty.
    message = schema["definitions"]["Message"]["properties"]
    assert message["body"] == {**message["body"], "type": "string", "default": ""}
    limits = schema["definitions"]["Limits"]["properties"]
    assert limits["batch_size"]["type"] == "integer" and "default" not in limits["batch_size"]


def test_every_spec_field_is_on_the_form_or_deliberately_off_it() -> None:
    spec = CampaignSpec(
        campaign_id="full.1",
        provider="postman",
        source="duckdb:///crm.db",
        results="/tmp/r",
        query="select phone, name from people",
        sender="ACME",
        body="Hi {{name}}",
        allow_braces=True,
        template="camp-9",
        template_vars=("name",),
        default_country="GB",
        suppress=("dnc.csv",),
        suppress_query="select phone from optouts",
        max_per_recipient=2,
        per_window="7d",
        quiet_hours="21:00-08:00",
        allow_countries=("GB", "IE"),
        block_countries=("IE",),
        prices="prices.csv",
        max_cost=120.5,
        max_failure_rate=0.3,
        min_sample=200,
        fallback="robase",
        fallback_sender="ACME2",
        columns={"phone": "msisdn"},
        encoding="latin-1",
        allow_empty=True,
        language="en",
        dry_run=False,
        batch_size=50,
        rate=2.5,
        concurrency=3,
        request_timeout=7.0,
    )
    # The Dask runner and a spend cap do not go together: the runner's fields round-trip in a second spec.
    on_dask = spec.model_copy(
        update={"runner": "dask", "dask_address": "tcp://10.0.0.5:8786", "dask_workers": 3, "max_cost": None}
    )
    defaults = {f: CampaignSpec.model_fields[f].get_default() for f in OFF_FORM}
    unset = [
        f
        for f in CampaignSpec.model_fields
        if f not in OFF_FORM
        and getattr(spec, f) == defaults.get(f)
        and getattr(on_dask, f) == defaults.get(f)
    ]
    assert unset == [], "give every form field a non-default value here"
    assert CampaignForm.from_spec(spec).to_spec() == spec
    assert CampaignForm.from_spec(on_dask).to_spec() == on_dask
    # A field added to CampaignSpec must be put on the form (and into this test) or into OFF_FORM.
    assert set(CampaignSpec.model_fields) == {*spec.model_dump(exclude=set(OFF_FORM)), *OFF_FORM}


def test_empty_text_means_not_set_and_the_default_is_a_dry_run() -> None:
    form = CampaignForm.model_validate(
        {
            **MINIMAL,
            "message": {"body": "  \n", "template": "", "template_vars": ["", " name "]},
            "provider": {"name": "robase", "sender": " "},
            "recipients": {"source": " s3://b/in/x.csv ", "default_country": "gb"},
        }
    )
    spec = form.to_spec()
    assert (spec.body, spec.template, spec.sender, spec.query, spec.language) == (None,) * 5
    assert spec.template_vars == ("name",) and spec.source == "s3://b/in/x.csv"
    assert spec.default_country == "GB"
    assert spec.dry_run is True  # nothing said about it: a dry run
    assert spec.provider == "robase" and spec.results == "s3://b/results"
    assert CampaignForm.model_validate({**MINIMAL, "dry_run": False}).to_spec().dry_run is False


def test_the_deployed_flows_take_the_form_and_default_to_a_dry_run() -> None:
    # What `prefect deployment run campaign/ad-hoc --params '{"campaign": {...}}'` hands the flow.
    params = adhoc_campaign.validate_parameters({"campaign": MINIMAL})
    assert params["campaign"].to_spec().dry_run is True
    for flow_fn in (adhoc_campaign, nightly_campaign, campaign_from_file):
        schema = parameter_schema(flow_fn).model_dump_for_openapi()
        assert schema["properties"]["campaign"]["$ref"] == "#/definitions/CampaignForm", flow_fn.name


def error_text(values: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        CampaignForm.model_validate(values)
    return "\n".join(f"{e['loc']}: {e['msg']}" for e in caught.value.errors())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"campaign_id": "spring sale!"}, "must be 1–64 letters, digits, '_', '.' or '-'"),
        ({"campaign_id": "-x"}, "starting with a letter or digit"),
        ({"advanced": {"results": "r", "encoding": "klingon"}}, "Advanced › Text encoding: unknown encoding"),
        (
            {"recipients": {"source": "postgresql://me:hunter2@db/crm"}},
            "Recipients › Source: the recipients source carries a password",
        ),
        ({"limits": {"rate": 0}}, "greater than 0"),
        ({"provider": {"name": "twilio"}}, "Input should be 'sandbox'"),
        ({"provider": {}}, "Field required"),
    ],
)
def test_refusals_are_in_words(change: dict[str, Any], words: str) -> None:
    text = error_text({**MINIMAL, **change})
    assert words in text
    assert "[A-Za-z" not in text and "^" not in text  # never the regex
    assert "hunter2" not in text  # never the value given


def test_the_ui_check_gives_words_not_a_regex() -> None:
    """The UI checks a form against the schema (POST /ui/schemas/validate, jsonschema) before it submits."""
    schema = ui_schema()
    bad = {"campaign": {**MINIMAL, "campaign_id": "x" * 65, "recipients": {}, "limits": {"batch_size": 0}}}
    errors = build_error_obj(validate(bad, schema, preprocess=True))
    text = json.dumps(errors)
    assert errors["valid"] is False
    assert "'source' is a required property" in text
    assert "is too long" in text and "less than the minimum of 1" in text
    assert "does not match" not in text
    # An id the schema lets through is refused by the form itself, in words (the run fails at once).
    assert validate({"campaign": {**MINIMAL, "campaign_id": "spring sale!"}}, schema) == []


def deployments() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    return {d["name"]: d for d in data["deployments"]}


def test_prefect_yaml_parameters_are_forms_and_keep_their_behaviour() -> None:
    deps = deployments()
    schema = ui_schema()
    for name in ("ad-hoc", "nightly", "s3-inbox"):
        campaign = deps[name]["parameters"]["campaign"]
        # As `prefect deploy` checks deployment parameters: the schema, missing required fields allowed.
        assert validate({"campaign": campaign}, schema, ignore_required=True) == [], name
        assert campaign["provider"] == {"name": "sandbox", "sender": "SMSCAST"}
        assert campaign["advanced"]["results"] == "s3://smscast/results"
    # The scheduled night and the inbox file send; the ad-hoc form opens as a dry run.
    assert CampaignForm.model_validate(deps["nightly"]["parameters"]["campaign"]).to_spec().dry_run is False
    inbox = CampaignForm.model_validate(deps["s3-inbox"]["parameters"]["campaign"]).to_spec()
    assert inbox.dry_run is False and inbox.campaign_id == "inbox"
    adhoc = deps["ad-hoc"]["parameters"]["campaign"]
    filled = {**adhoc, "campaign_id": "a", "recipients": {"source": "s"}}
    assert CampaignForm.model_validate(filled).to_spec().dry_run is True
    # The nightly schedule is created paused: its source is a placeholder until configured.
    (nightly_schedule,) = deps["nightly"]["schedules"]
    assert nightly_schedule["active"] is False and nightly_schedule["slug"]
    assert deps["every-15-minutes"]["schedules"][0]["active"] is True


def load_bootstrap() -> Any:
    name = "smscast_deployments_bootstrap"
    spec = importlib.util.spec_from_file_location(name, ROOT / "deployments" / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


def test_bootstrap_names_each_paused_schedule_and_how_to_resume_it() -> None:
    bootstrap = load_bootstrap()
    paused = bootstrap.ScheduleState(
        deployment="nightly-campaign/nightly",
        deployment_id=uuid4(),
        schedule_id=uuid4(),
        key="nightly-0200",
        active=False,
        what="cron 0 2 * * * (Europe/London)",
        source="s3://smscast/nightly/recipients.parquet",
    )
    running = bootstrap.ScheduleState(
        deployment="reconcile/every-15-minutes",
        deployment_id=uuid4(),
        schedule_id=uuid4(),
        key="every-15-minutes",
        active=True,
        what="every 900 s",
        source=None,
    )
    text = "\n".join(bootstrap.paused_notice([paused, running]))
    assert "nightly-campaign/nightly (cron 0 2 * * * (Europe/London)) is PAUSED" in text
    assert "s3://smscast/nightly/recipients.parquet" in text
    assert f"prefect deployment schedule resume nightly-campaign/nightly {paused.schedule_id}" in text
    assert "every-15-minutes" not in text
    assert bootstrap.paused_notice([running]) == []
