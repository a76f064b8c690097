//! The propagation benchmark's load: fills a namespace with services and instances through the
//! REST API, subscribes many lightweight proxy streams, then changes one instance at a time
//! and measures how long each change takes to reach every subscriber. Run by
//! `bench/propagation`, which starts the server.
//!
//!   propagation URL TOKEN [--services N] [--instances N] [--subscribers N] [--changes N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::Method;
use serde_json::json;
use tether_api::v1::config_stream_client::ConfigStreamClient;
use tether_api::v1::{Ack, Hello, ProxyMessage, proxy_message};
use tether_testkit::Client;
use tokio::sync::{Semaphore, mpsc, watch};

const NS: &str = "bench";
/// Streams per HTTP/2 connection (below the server's concurrent-stream limit).
const STREAMS_PER_CONNECTION: usize = 100;

struct Args {
    url: String,
    token: String,
    services: usize,
    instances: usize,
    subscribers: usize,
    changes: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let (Some(url), Some(token)) = (it.next(), it.next()) else {
        bail!("usage: propagation URL TOKEN [--services N] [--instances N] [--subscribers N] [--changes N]");
    };
    let mut a = Args { url, token, services: 100, instances: 10_000, subscribers: 1_000, changes: 50 };
    while let Some(flag) = it.next() {
        let n: usize = it.next().context("a number after the flag")?.parse()?;
        match flag.as_str() {
            "--services" => a.services = n,
            "--instances" => a.instances = n,
            "--subscribers" => a.subscribers = n,
            "--changes" => a.changes = n,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let api = Api {
        client: Client::http1().timeout(Duration::from_secs(30)),
        url: a.url.clone(),
        token: a.token.clone(),
    };
    let fill = Instant::now();
    api.put(&format!("/v1/namespaces/{NS}"), json!({})).await?;
    for s in 0..a.services {
        let name = format!("svc-{s}");
        let spec = json!({
            "portMappings": [{ "name": "http", "containerPort": 8080, "appProtocol": "http" }],
            "serviceConnectConfiguration": { "enabled": true, "services": [{
                "portName": "http", "discoveryName": name, "clientAliases": [{ "port": 80, "dnsName": name }]
            }]}
        });
        api.put(&format!("/v1/namespaces/{NS}/services/{name}"), spec).await?;
    }
    api.put(
        &format!("/v1/namespaces/{NS}/services/client"),
        json!({ "serviceConnectConfiguration": { "enabled": true } }),
    )
    .await?;
    let api = Arc::new(api);
    let permits = Arc::new(Semaphore::new(32));
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..a.instances {
        let (api, permit) = (api.clone(), permits.clone().acquire_owned().await?);
        let service = i % a.services;
        puts.spawn(async move {
            let _permit = permit;
            api.put(&instance_path(service, i), instance(i, "HEALTHY")).await
        });
    }
    while let Some(put) = puts.join_next().await {
        put??;
    }
    println!("filled: {} services, {} instances in {:.1?}", a.services, a.instances, fill.elapsed());

    // Subscribers: each reports the time it sees each change, by change number.
    let (seen, mut sightings) = mpsc::unbounded_channel::<(usize, Instant)>();
    let (expect, expected) = watch::channel(None::<(usize, String)>);
    let subscribed = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..a.subscribers.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(tonic::transport::Endpoint::from_shared(a.url.clone())?.connect().await?);
    }
    let (ready, mut readies) = mpsc::unbounded_channel();
    for i in 0..a.subscribers {
        let channel = channels[i / STREAMS_PER_CONNECTION].clone();
        let token = a.token.clone();
        let (seen, expected, ready) = (seen.clone(), expected.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = subscriber(i, channel, token, seen, expected, ready).await {
                eprintln!("subscriber {i}: {e:#}");
            }
        });
    }
    drop(ready);
    let mut snapshot_bytes = 0;
    for _ in 0..a.subscribers {
        snapshot_bytes = readies.recv().await.context("a subscriber failed")?;
    }
    println!(
        "subscribed: {} streams in {:.1?}, each snapshot {} KiB",
        a.subscribers,
        subscribed.elapsed(),
        snapshot_bytes / 1024
    );

    let mut latencies = Vec::with_capacity(a.changes * a.subscribers);
    for change in 0..a.changes {
        let i = (change * 7919) % a.instances;
        let service = i % a.services;
        // Each change marks an instance UNHEALTHY (measured), then HEALTHY again (not measured).
        let health = "UNHEALTHY";
        let _ = expect.send(Some((change, format!("outbound/svc-{service}"))));
        let start = Instant::now();
        api.put(&instance_path(service, i), instance(i, health)).await?;
        let mut got = 0;
        while got < a.subscribers {
            let (c, at) = tokio::time::timeout(Duration::from_secs(30), sightings.recv())
                .await
                .context("a change did not reach every subscriber within 30 s")?
                .context("subscribers gone")?;
            if c == change {
                latencies.push(at.duration_since(start));
                got += 1;
            }
        }
        let _ = expect.send(None);
        api.put(&instance_path(service, i), instance(i, "HEALTHY")).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "propagation over {} changes × {} subscribers: p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        a.changes,
        a.subscribers,
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

fn instance_path(service: usize, i: usize) -> String {
    format!("/v1/namespaces/{NS}/services/svc-{service}/instances/i-{i}")
}

fn instance(i: usize, health: &str) -> serde_json::Value {
    let (a, b) = (10 + i / 250, i % 250 + 1);
    json!({ "task": format!("task-{i}"), "address": format!("10.0.{a}.{b}"), "port": 15000, "health": health })
}

struct Api {
    client: Client,
    url: String,
    token: String,
}

impl Api {
    async fn put(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let req = http::Request::builder()
            .method(Method::PUT)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))?;
        let reply = self.client.request(req).await?;
        if !reply.status.is_success() {
            bail!("PUT {path}: {} {}", reply.status, reply.text());
        }
        Ok(())
    }
}

async fn subscriber(
    i: usize,
    channel: tonic::transport::Channel,
    token: String,
    seen: mpsc::UnboundedSender<(usize, Instant)>,
    expected: watch::Receiver<Option<(usize, String)>>,
    ready: mpsc::UnboundedSender<usize>,
) -> anyhow::Result<()> {
    let (send, outgoing) = mpsc::channel(4);
    let hello = Hello {
        namespace: NS.into(),
        service: "client".into(),
        task: format!("sub-{i}"),
        version: 0,
        edge: false,
    };
    send.send(ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }).await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = ConfigStreamClient::new(channel).subscribe(request).await?.into_inner();
    let (mut first, mut snapshot_bytes) = (true, 0);
    while let Some(update) = stream.message().await? {
        let at = Instant::now();
        if first {
            // The snapshot comes in pieces; the last one says no `more`.
            snapshot_bytes += update.resources.iter().map(|r| r.json.len()).sum::<usize>();
            if !update.more {
                let _ = ready.send(snapshot_bytes);
                first = false;
            }
        } else if let Some((change, name)) = expected.borrow().clone()
            && update.resources.iter().any(|r| r.name == name)
        {
            let _ = seen.send((change, at));
        }
        let ack = ProxyMessage { kind: Some(proxy_message::Kind::Ack(Ack { version: update.version })) };
        let _ = send.try_send(ack);
    }
    Ok(())
}
