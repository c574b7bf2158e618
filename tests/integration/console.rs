//! The console's server side: the embedded page and assets with their
//! headers, `GET /v1/whoami` for every role, and the exception filters the
//! console's queue page uses. (The page itself is driven in Chromium by
//! tests/browser/, run by scripts/browser-tests.sh.)

use serde_json::json;

use crate::harness::{call, Server};

const KEYS: &str = r#"
[[keys]]
name = "ops"
key = "console-ops"
role = "admin"

[[keys]]
name = "watcher"
key = "console-watcher"
role = "observer"

[[keys]]
name = "erp"
key = "console-erp"
role = "system"
locations = ["wh-east"]
sources = ["erp"]

[[keys]]
name = "shop"
key = "console-shop"
role = "channel"
channel = "web"
"#;

#[test]
fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let server = Server::start(KEYS);
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        // Public: the page holds no data; everything it shows needs a key.
        let answer = ureq::get(&server.url(path)).call().expect(path);
        assert_eq!(answer.status(), 200, "{path}");
        assert!(
            answer.content_type().starts_with(kind),
            "{path}: {}",
            answer.content_type()
        );
        let policy = answer.header("content-security-policy").expect("CSP");
        assert!(
            policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
            "{policy}"
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        let body = answer.into_string().expect("body");
        assert!(body.len() > 1000, "{path} is {} bytes", body.len());
    }
    let missing = ureq::get(&server.url("/console/secrets.txt")).call();
    match missing {
        Err(ureq::Error::Status(404, response)) => {
            assert_eq!(response.content_type(), "application/problem+json");
            let problem: serde_json::Value = response.into_json().expect("problem");
            assert_eq!(problem["code"], "not_found");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn whoami_names_the_key_its_role_and_scope_and_needs_a_key() {
    let server = Server::start(KEYS);
    let who = |token: &str| {
        call(
            ureq::get(&server.url("/v1/whoami")).set("Authorization", &format!("Bearer {token}")),
            None,
        )
    };
    let (status, body) = who("console-ops");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"key": "ops", "role": "admin", "locations": [], "sources": []})
    );
    assert_eq!(who("console-watcher").1["role"], "observer");
    let (_, erp) = who("console-erp");
    assert_eq!(
        erp,
        json!({"key": "erp", "role": "system", "locations": ["wh-east"], "sources": ["erp"]})
    );
    let (_, shop) = who("console-shop");
    assert_eq!(shop["channel"], "web");
    assert_eq!(shop["role"], "channel");
    let (status, body) = who("no-such-key");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = call(ureq::get(&server.url("/v1/whoami")), None);
    assert_eq!(status, 401);
}

#[test]
fn exceptions_filter_by_sku_location_and_source() {
    let server = Server::start(KEYS).with_token("console-ops");
    // Three rejected events (nothing is quarantined, so a release is refused).
    let bad = |id: &str, source: &str, sku: &str, location: &str| {
        json!({"event_id": id, "type": "quarantine", "source": source, "sku": sku,
               "location": location, "qty": 1, "action": "release"})
    };
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            bad("x-1", "wms", "sku-a", "wh-east"),
            bad("x-2", "erp", "sku-a", "wh-west"),
            bad("x-3", "wms", "sku-b", "wh-east"),
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let ids = |query: &str| -> Vec<String> {
        let (status, body) = server.get(&format!("/v1/exceptions?{query}"));
        assert_eq!(status, 200, "{query}: {body}");
        // The events of one batch are applied per position concurrently, so
        // their exceptions' ids need not follow the batch order.
        let mut found: Vec<String> = body["exceptions"]
            .as_array()
            .expect("exceptions")
            .iter()
            .map(|e| e["event_id"].as_str().expect("event_id").to_string())
            .collect();
        found.sort();
        found
    };
    assert_eq!(ids("sku=sku-a"), ["x-1", "x-2"]);
    assert_eq!(ids("location=wh-east"), ["x-1", "x-3"]);
    assert_eq!(ids("source=erp"), ["x-2"]);
    assert_eq!(
        ids("sku=sku-a&location=wh-east&source=wms&kind=rejected_event&status=open"),
        ["x-1"]
    );
    assert!(ids("sku=sku-a&source=nobody").is_empty());
    let (status, body) = server.get("/v1/exceptions?colour=red");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "unknown_field");
}
