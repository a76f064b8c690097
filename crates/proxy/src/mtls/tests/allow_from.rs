//! Reliability A8: a caller not in the callee's `allowFrom` is refused at the callee's sidecar,
//! by the identity its certificate proves and nothing it says.

use super::harness::{EchoBackend, HttpBackend, Leaf, Mesh, Sidecar, echo, get};
use super::{callee_config, caller_config};

const ONLY_CHECKOUT: &str = "{ allowFrom: [\"spiffe://shop/checkout\"] }";

#[tokio::test]
async fn only_the_callers_in_allow_from_get_through() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some(ONLY_CHECKOUT)), &mesh.credentials("payment"))
            .await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));
    let checkout =
        Sidecar::start(&caller_config("checkout", api, raw, 1.0), &mesh.credentials("checkout")).await;
    let admin = Sidecar::start(&caller_config("admin", api, raw, 1.0), &mesh.credentials("admin")).await;

    assert_eq!(get(checkout.addr("payment"), "/", &[]).await.status, 200);
    assert_eq!(echo(checkout.addr("payment-raw"), b"ping").await, b"ping");
    assert_eq!((http.requests(), echo_app.connections()), (1, 1));

    let refused = get(admin.addr("payment"), "/", &[]).await;
    assert_eq!((refused.status.as_u16(), refused.error()), (403, Some("forbidden")));
    assert!(
        refused.body.contains("`spiffe://shop/admin` may not call `api`")
            && refused.body.contains("allowFrom: spiffe://shop/checkout"),
        "{}",
        refused.body
    );
    // Headers claiming another identity change nothing.
    let spoofed = [
        ("x-forwarded-client-cert", "By=spiffe://shop/payment;URI=spiffe://shop/checkout"),
        ("x-tether-caller", "spiffe://shop/checkout"),
        ("x-tether-identity", "spiffe://shop/checkout"),
    ];
    assert_eq!(get(admin.addr("payment"), "/", &spoofed).await.status, 403);
    // A tcp caller is cut off before the app is connected: nothing comes back.
    assert_eq!(echo(admin.addr("payment-raw"), b"ping").await, b"");
    assert_eq!((http.requests(), echo_app.connections()), (1, 1), "a refused caller reached an app");

    let denied = |listener: &str| {
        format!(
            "tether_denied_requests_total{{service=\"payment\",listener=\"{listener}\",caller=\"spiffe://shop/admin\"}}"
        )
    };
    assert_eq!(callee.metric(&denied("api")).await, Some(2));
    assert_eq!(callee.metric(&denied("raw")).await, Some(1));
}

#[tokio::test]
async fn a_changed_allow_from_applies_to_connections_already_open() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some(ONLY_CHECKOUT)), &mesh.credentials("payment"))
            .await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));
    let checkout =
        Sidecar::start(&caller_config("checkout", api, raw, 1.0), &mesh.credentials("checkout")).await;
    // The caller's sidecar opens its HTTP/2 connection to the callee, and keeps it.
    assert_eq!(get(checkout.addr("payment"), "/", &[]).await.status, 200);

    // The listeners keep their addresses (port 0 stays 0): updated in place.
    let only_admin = "{ allowFrom: [\"spiffe://shop/admin\"] }";
    callee.apply(&callee_config(&http, &echo_app, Some(only_admin))).await;

    let refused = get(checkout.addr("payment"), "/", &[]).await;
    assert_eq!((refused.status.as_u16(), refused.error()), (403, Some("forbidden")));
    assert!(refused.body.contains("allowFrom: spiffe://shop/admin"), "{}", refused.body);
    assert_eq!(http.requests(), 1);
}

#[tokio::test]
async fn without_allow_from_any_service_of_the_namespace_may_call_and_no_other() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));
    let neighbour =
        Sidecar::start(&caller_config("checkout", api, raw, 1.0), &mesh.credentials("checkout")).await;
    // Same CA, same service name, another namespace of the control plane.
    let stranger = mesh.credentials_of(Leaf::spiffe_in("lab", "checkout"));
    let stranger = Sidecar::start(&caller_config("checkout", api, raw, 1.0), &stranger).await;

    assert_eq!(get(neighbour.addr("payment"), "/", &[]).await.status, 200);
    let refused = get(stranger.addr("payment"), "/", &[]).await;
    assert_eq!((refused.status.as_u16(), refused.error()), (403, Some("forbidden")));
    assert!(refused.body.contains("any service of the namespace"), "{}", refused.body);
    assert_eq!(echo(stranger.addr("payment-raw"), b"ping").await, b"");
    assert_eq!(http.requests(), 1, "a caller of another namespace reached the app");
}
