//! The OpenAPI document matches the router exactly, documents errors, and
//! is served; every response carries a request id.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::TestEnv;

fn spec() -> Value {
    notify_api::docs::document()
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[test]
fn every_route_is_in_the_spec_and_every_spec_path_is_routed() {
    let routed: BTreeSet<(String, String)> = notify_api::startup::route_table()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_ascii_lowercase(), p.to_string()))
        .collect();
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                documented.insert((m.to_string(), path.clone()));
            }
        }
    }
    let missing: Vec<_> = routed.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the spec: {missing:?}"
    );
    assert!(phantom.is_empty(), "spec paths with no route: {phantom:?}");
}

#[test]
fn every_webhook_event_type_is_documented_with_a_schema() {
    let spec = spec();
    let webhooks = spec["webhooks"].as_object().expect("a webhooks section");
    let mut expected: Vec<&str> = platform::webhooks::EVENT_TYPES.to_vec();
    expected.push(platform::webhooks::TEST_EVENT);
    let documented: Vec<&str> = webhooks.keys().map(String::as_str).collect();
    assert_eq!(
        documented.iter().copied().collect::<BTreeSet<_>>(),
        expected.iter().copied().collect::<BTreeSet<_>>()
    );
    for (event, item) in webhooks {
        let op = &item["post"];
        let reference = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{event} names its body schema"));
        let name = reference.trim_start_matches("#/components/schemas/");
        let schema = &spec["components"]["schemas"][name];
        assert!(schema.is_object(), "{event}: {reference} is a component");
        assert!(
            schema["properties"]["data"].is_object(),
            "{event}: {name} has data: {schema}"
        );
        let headers: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            headers,
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
    }
}

#[test]
fn protected_operations_document_their_errors() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let responses = op["responses"].as_object().unwrap();
            if op.get("security").is_some() {
                for code in ["401", "429"] {
                    assert!(responses.contains_key(code), "{m} {path} lacks {code}");
                }
                assert!(
                    responses.contains_key("403") || path.starts_with("/api/v1/auth"),
                    "{m} {path} lacks 403"
                );
                for (status, response) in responses {
                    if status.starts_with('4') {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{m} {path} {status}"
                        );
                        assert!(
                            response["description"]
                                .as_str()
                                .is_some_and(|d| d.contains('`')),
                            "{m} {path} {status} names its error codes"
                        );
                    }
                }
            }
            if op.get("requestBody").is_some() {
                assert!(
                    responses.keys().any(|c| c == "422" || c == "400"),
                    "{m} {path} lacks 4xx for its body"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_and_docs_are_served_and_responses_carry_request_ids() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let res = api.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, spec());
    let docs = api.client.get(api.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);

    // Generated when absent (a UUID), echoed when given, on errors too.
    let res = api.request(Method::GET, "/health", None, None).await;
    let generated = res.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    let res = api
        .client
        .get(api.url("/api/v1/messages"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    let res = api
        .request(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert!(res.headers.contains_key("x-request-id"));
    let res = api
        .request(Method::PATCH, "/api/v1/messages/email/send", None, None)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}
