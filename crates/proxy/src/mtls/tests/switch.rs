//! A listener whose `tls` changes in a config update switches for the connections that follow;
//! listeners without `tls` stay plaintext.

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::{EchoBackend, HttpBackend, Mesh, Sidecar, eventually, get};
use super::{callee_config, caller_config};

#[tokio::test]
async fn turning_tls_on_and_off_applies_to_new_connections() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee = Sidecar::start(&callee_config(&http, &echo_app, None), &mesh.credentials("payment")).await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));
    let caller =
        Sidecar::start(&caller_config("checkout", api, raw, 1.0), &mesh.credentials("checkout")).await;

    // Plaintext, as before this existed; a sidecar with an identity to check fails to connect.
    assert_eq!(get(api, "/plain", &[]).await.body, "hello /plain");
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.error(), Some("tls-handshake-failed"));
    assert_eq!(callee.admin("/ready").await.status, 200);

    // A keep-alive plaintext connection opened before the switch.
    let before = TcpStream::connect(api).await.unwrap();
    let (mut before, conn) = hyper::client::conn::http1::handshake(TokioIo::new(before)).await.unwrap();
    tokio::spawn(conn);
    let get_before =
        |path: &str| Request::get(path).header("host", "payment").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(before.send_request(get_before("/before")).await.unwrap().status(), 200);
    callee.apply(&callee_config(&http, &echo_app, Some("{}"))).await;
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
    let mut plain = TcpStream::connect(api).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n").await.unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    eventually("plaintext refused", || async { callee.refused("plaintext").await == 1 }).await;
    // It has no identity to allow: its requests are refused from now on.
    let refused = before.send_request(get_before("/after")).await.unwrap();
    assert_eq!(
        (refused.status().as_u16(), refused.headers()[crate::ERROR_HEADER].to_str().unwrap()),
        (403, "forbidden")
    );

    callee.apply(&callee_config(&http, &echo_app, None)).await;
    assert_eq!(get(api, "/plain-again", &[]).await.body, "hello /plain-again");
    assert_eq!(http.requests(), 4);
}
