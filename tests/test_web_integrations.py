"""The web routes for other tools: GitHub and generic hooks, and /metrics, through the Flask
test client on a real database (the hook logic itself is tested in test_hooks.py)."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from test_hooks import SECRET, hub, push_payload  # noqa: F401  (hub is a fixture)

from dirt import hooks
from dirt.web import create_app


def post_push(app, payload, secret=SECRET, delivery="d-1"):
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
               "Content-Type": "application/json"}
    if secret:
        headers["X-Hub-Signature-256"] = hooks.sign(secret, body)
    return app.test_client().post("/api/v1/hooks/github", data=body, headers=headers)


def test_a_signed_push_submits_a_record_once(hub):  # noqa: F811
    app = create_app(hub.settings, hub.couch)
    answer = post_push(app, push_payload())
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["record"] == "widget-main-9d2f1c3b7a8e"
    again = post_push(app, push_payload())  # the same delivery, replayed
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert [r["name"] for r in hub.records()] == ["widget-main-9d2f1c3b7a8e"]


def test_a_bad_or_missing_signature_is_401_and_writes_nothing(hub):  # noqa: F811
    app = create_app(hub.settings, hub.couch)
    before = hub.doc_count()
    assert post_push(app, push_payload(), secret="not the secret").status_code == 401
    assert post_push(app, push_payload(), secret="", delivery="d-2").status_code == 401
    assert hub.doc_count() == before


def test_the_generic_hook_needs_the_shared_secret(hub):  # noqa: F811
    client = create_app(hub.settings, hub.couch).test_client()
    spec = {"name": "nightly-1", "tasks": ["echo@linux"]}
    refused = client.post("/api/v1/hooks/generic", json=spec)
    assert refused.status_code == 401
    accepted = client.post("/api/v1/hooks/generic", json=spec,
                           headers={"Authorization": "Bearer generic-shared-secret"})
    assert accepted.status_code == 201, accepted.get_json()
    assert [r["name"] for r in hub.records()] == ["nightly-1"]


def test_metrics_count_tasks_by_state_and_hosts(hub):  # noqa: F811
    app = create_app(hub.settings, hub.couch)
    assert post_push(app, push_payload()).status_code == 201
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.get_data(as_text=True))
               for s in family.samples}
    assert samples[("dirt_tasks", (("state", "pending"),))] == 2
