//! Real handshakes between the configs of this module, over in-memory pipes.

mod credentials;
pub(crate) mod pki;
mod refusals;
mod rotation;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    ALPN_H2, ALPN_TCP, Reason, Side, TlsMetrics, client_config, client_config_expecting, server_config,
};
use pki::{ALPN, Ca, Leaf, credentials, handshake, spiffe};

/// Sends `message` from `from` and reads it at `to`.
async fn carries(from: &mut (impl AsyncWrite + Unpin), to: &mut (impl AsyncRead + Unpin), message: &[u8]) {
    from.write_all(message).await.unwrap();
    from.flush().await.unwrap();
    let mut got = vec![0; message.len()];
    to.read_exact(&mut got).await.unwrap();
    assert_eq!(got, message);
}

#[tokio::test]
async fn sidecars_authenticate_each_other_and_learn_each_others_spiffe_id() {
    let ca = Ca::new("tether root");
    let (payment, checkout) = (ca.issue(Leaf::spiffe("payment")), ca.issue(Leaf::spiffe("checkout")));
    let (server, client) = (credentials(&payment, &[&ca]), credentials(&checkout, &[&ca]));
    let metrics = TlsMetrics::default();

    let (accepted, connected) =
        handshake(server_config(&server, ALPN), &metrics, client_config(&client, &[ALPN_H2]), &metrics).await;
    let (mut inbound, caller) = accepted.unwrap();
    let (mut outbound, callee) = connected.unwrap();
    assert_eq!(caller, spiffe("checkout"));
    assert_eq!(callee, spiffe("payment"));
    assert_eq!(super::peer_identity_of(inbound.get_ref().1), Some(spiffe("checkout")));
    assert_eq!(super::peer_identity_of(outbound.get_ref().1), Some(spiffe("payment")));
    assert_eq!(inbound.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(outbound.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    carries(&mut outbound, &mut inbound, b"ping").await;
    carries(&mut inbound, &mut outbound, b"pong").await;

    // ALPN tells raw TCP from HTTP; a client that expects the callee it reached succeeds.
    let expecting = client_config_expecting(&client, &[ALPN_TCP], spiffe("payment"));
    let (accepted, connected) = handshake(server_config(&server, ALPN), &metrics, expecting, &metrics).await;
    assert_eq!(accepted.unwrap().0.get_ref().1.alpn_protocol(), Some(ALPN_TCP));
    assert_eq!(connected.unwrap().1, spiffe("payment"));

    for side in [Side::Inbound, Side::Outbound] {
        for reason in Reason::ALL {
            assert_eq!(metrics.handshake_errors(side, reason), 0, "{side:?} {reason:?}");
        }
    }
}
