//! The proxy stream's identity half, against a real server on a real socket: what a sidecar is
//! issued (the identity its token earns, whatever its CSR asks), the trust bundle it is sent, and
//! what it is refused.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use tether_api::v1::config_stream_client::ConfigStreamClient;
use tether_api::v1::{CertificateRequest, ConfigUpdate, Hello, ProxyMessage, proxy_message};
use tether_control::identity::{BootstrapTokens, IdentityOptions, Scope};
use tether_control::{Server, ServerConfig};
use tether_store::Embedded;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Running {
    url: String,
    token: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn server() -> Running {
    let (data, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        identity: IdentityOptions::default(),
        scheduler: None,
    };
    let server = Server::bind(&config, Embedded::open(db.path()).unwrap()).await.unwrap();
    let token = server.admin_token().as_str().to_owned();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    Running { url, token, _dirs: (data, db) }
}

/// A subscribed stream, and the sender of the proxy's messages.
async fn subscribe(
    running: &Running,
    token: &str,
    service: &str,
    task: &str,
) -> Result<(mpsc::Sender<ProxyMessage>, Streaming<ConfigUpdate>), tonic::Status> {
    let (send, outgoing) = mpsc::channel(16);
    let hello =
        Hello { namespace: "shop".into(), service: service.into(), task: task.into(), ..Hello::default() };
    send.send(ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut client = ConfigStreamClient::connect(running.url.clone()).await.unwrap();
    let updates = client.subscribe(request).await?.into_inner();
    Ok((send, updates))
}

/// A CSR whose own names claim to be `spiffe://shop/admin`.
fn csr_claiming_admin() -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI("spiffe://shop/admin".try_into().unwrap())];
    params.serialize_request(&KeyPair::generate().unwrap()).unwrap().pem().unwrap()
}

fn request(csr_pem: String) -> ProxyMessage {
    ProxyMessage { kind: Some(proxy_message::Kind::CertificateRequest(CertificateRequest { csr_pem })) }
}

async fn next(updates: &mut Streaming<ConfigUpdate>) -> ConfigUpdate {
    tokio::time::timeout(Duration::from_secs(10), updates.message()).await.unwrap().unwrap().unwrap()
}

fn uri_sans(chain_pem: &str) -> Vec<String> {
    let leaf = pem::parse_many(chain_pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_sidecar_is_issued_the_identity_its_token_earns_and_the_bundle_first() {
    let running = server().await;
    let tokens = BootstrapTokens::new(&tether_control::AdminToken::new(running.token.clone()));
    let scope = Scope { namespace: "shop".into(), service: "payment".into(), task: "payment-1".into() };
    let token = tokens.mint(&scope);
    let (send, mut updates) = subscribe(&running, &token, "payment", "payment-1").await.unwrap();

    let snapshot = next(&mut updates).await;
    assert!(snapshot.full);
    let bundle = snapshot.trust_bundle.expect("the first snapshot carries the trust bundle");
    assert_eq!(bundle.roots_pem.len(), 1);

    send.send(request(csr_claiming_admin())).await.unwrap();
    let issued = next(&mut updates).await.certificate.expect("an answer to the request");
    assert_eq!(issued.error, "");
    assert_eq!(uri_sans(&issued.chain_pem), ["spiffe://shop/payment"], "the token decides, not the CSR");
    assert!(issued.chain_pem.ends_with(&bundle.roots_pem[0]), "the chain ends with the signing root");

    // A CSR that is not one is answered with why, and the stream goes on.
    send.send(request("not a csr".into())).await.unwrap();
    let refused = next(&mut updates).await.certificate.unwrap();
    assert!(
        refused.chain_pem.is_empty() && refused.error.contains("certificate signing request"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_bootstrap_token_is_good_for_its_own_task_only() {
    let running = server().await;
    let tokens = BootstrapTokens::new(&tether_control::AdminToken::new(running.token.clone()));
    let token =
        tokens.mint(&Scope { namespace: "shop".into(), service: "payment".into(), task: "payment-1".into() });
    for (service, task) in [("admin", "payment-1"), ("payment", "payment-2")] {
        let refused = subscribe(&running, &token, service, task).await.map(drop);
        let status = match refused {
            Err(status) => status,
            // The refusal may come as the stream's first item.
            Ok(()) => panic!("{service}/{task} was accepted with payment-1's token"),
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("the bootstrap token is for task `payment-1`"), "{status:?}");
    }
    let forged = token.replacen(":payment:", ":admin:", 1);
    let status = subscribe(&running, &forged, "admin", "payment-1").await.map(drop).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_stream_asking_for_certificates_in_a_loop_is_refused_after_a_burst() {
    let running = server().await;
    let (send, mut updates) = subscribe(&running, &running.token, "payment", "payment-1").await.unwrap();
    next(&mut updates).await;
    let mut issued = 0;
    let mut refused = Vec::new();
    for _ in 0..12 {
        send.send(request(csr_claiming_admin())).await.unwrap();
        let answer = next(&mut updates).await.certificate.unwrap();
        if answer.error.is_empty() { issued += 1 } else { refused.push(answer.error) }
    }
    assert_eq!(issued, 10);
    assert_eq!(refused.len(), 2);
    assert!(refused[0].contains("more than 10 certificate requests"), "{refused:?}");
}
