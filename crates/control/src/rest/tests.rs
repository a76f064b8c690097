use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tether_store::Embedded;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "secret-token";

fn api() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    (router(Registry::new(store), AdminToken::new(TOKEN)), dir)
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `(METHOD, path)` for every operation in the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

fn served() -> BTreeSet<(String, String)> {
    PUBLIC
        .iter()
        .chain(&protected_routes::<Embedded>())
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect()
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let (documented, served) = (documented(), served());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
    assert!(unserved.is_empty(), "openapi.json describes routes the router lacks: {unserved:?}");
    // Every $ref points at something.
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    for reference in OPENAPI.split("\"$ref\": \"#/").skip(1).filter_map(|s| s.split('"').next()) {
        let target = reference.split('/').fold(&doc, |node, part| &node[part]);
        assert!(!target.is_null(), "dangling $ref {reference}");
    }
}

/// Each route in the table is really routed (a request reaches the token check, not the 404 or
/// 405 fallback), and none answers without the token.
#[tokio::test]
async fn every_route_but_the_public_ones_needs_the_token() {
    let (router, _dir) = api();
    for (method, path) in protected_routes::<Embedded>() {
        let path = path.replace("{ns}", "shop.local").replace("{name}", "payment").replace("{id}", "7");
        for token in [None, Some("wrong"), Some(&TOKEN[1..])] {
            let (status, body) = call(&router, method, &path, token, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains("token")), "{body}");
        }
    }
    for (method, path) in PUBLIC {
        assert_eq!(call(&router, method, path, None, "").await.0, StatusCode::OK, "{method} {path}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let (router, _dir) = api();
    let (status, body) = call(&router, "GET", "/v2/nothing", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/v2/nothing"), "{body}");
    let (status, body) = call(&router, "PATCH", "/v1/namespaces", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body["errors"].is_array(), "{body}");
}

#[tokio::test]
async fn errors_name_their_field() {
    let (router, _dir) = api();
    let (status, body) = call(&router, "PUT", "/v1/namespaces/Shop", Some(TOKEN), "").await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("namespace")), "{body}");
    let (status, body) = call(&router, "PUT", "/v1/namespaces/shop", Some(TOKEN), r#"{"labels": {}}"#).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("labels")), "{body}");
    assert_eq!(call(&router, "PUT", "/v1/namespaces/shop", Some(TOKEN), "{}").await.0, StatusCode::CREATED);
    assert_eq!(call(&router, "PUT", "/v1/namespaces/shop", Some(TOKEN), "").await.0, StatusCode::OK);

    let path = "/v1/namespaces/shop/services/payment";
    let (status, body) = call(&router, "PUT", path, Some(TOKEN), r#"{"desiredCount": "two"}"#).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("desiredCount")), "{body}");
    let (status, body) =
        call(&router, "GET", &format!("{path}/instances?health=healthy"), Some(TOKEN), "").await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("health")), "{body}");
    let (status, body) = call(&router, "POST", "/v1/leases", Some(TOKEN), r#"{"ttlSeconds": 0}"#).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("ttlSeconds")), "{body}");
    let (status, body) = call(&router, "PUT", "/v1/leases/abc", Some(TOKEN), "").await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")), "{body}");
    let (status, _) = call(&router, "PUT", "/v1/leases/12345", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
