use serde_json::json;
use tether_model::Health;
use tether_store::Embedded;

use super::*;

const NS: &str = "shop.local";

fn registry() -> (Registry<Embedded>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    (Registry::new(store), dir)
}

fn spec(discovery: &str, dns: &str, port: u16) -> ServiceSpec {
    serde_json::from_value(json!({
        "portMappings": [{ "name": "api", "containerPort": 3000, "appProtocol": "http" }],
        "serviceConnectConfiguration": {
            "enabled": true,
            "services": [{ "portName": "api", "discoveryName": discovery, "clientAliases": [{ "port": port, "dnsName": dns }] }]
        }
    }))
    .unwrap()
}

fn registration(health: Health, lease: Option<i64>) -> Registration {
    serde_json::from_value(json!({ "address": "10.0.0.1", "port": 15001, "health": health, "lease": lease }))
        .unwrap()
}

#[tokio::test]
async fn namespaces_are_created_once_and_deleted_only_when_empty() {
    let (registry, _dir) = registry();
    let (ns, outcome) = registry.put_namespace(NS).await.unwrap();
    assert_eq!((ns.name.as_str(), outcome), (NS, Outcome::Created));
    assert_eq!(registry.put_namespace(NS).await.unwrap().1, Outcome::Replaced);
    registry.put_namespace("other").await.unwrap();
    let names: Vec<String> = registry.list_namespaces().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["other", NS]);

    registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    let e = registry.delete_namespace(NS).await.unwrap_err();
    assert!(matches!(&e, Error::NamespaceNotEmpty { services, .. } if services == &["payment"]), "{e}");
    registry.delete_service(NS, "payment").await.unwrap();
    registry.delete_namespace(NS).await.unwrap();
    assert!(matches!(registry.get_namespace(NS).await, Err(Error::NamespaceNotFound(_))));
    assert!(matches!(registry.delete_namespace(NS).await, Err(Error::NamespaceNotFound(_))));
    assert!(matches!(registry.put_namespace("Bad/Name").await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn a_service_needs_its_namespace_and_unique_names() {
    let (registry, _dir) = registry();
    let e = registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap_err();
    assert!(matches!(e, Error::NamespaceNotFound(_)), "{e}");
    registry.put_namespace(NS).await.unwrap();
    let (record, outcome) =
        registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    assert_eq!(outcome, Outcome::Created);
    let before = registry.snapshot(NS).await.unwrap();

    let e = registry.put_service(NS, "billing", spec("payment", "payment", 80)).await.unwrap_err();
    let Error::Taken(errors) = e else { panic!("{e}") };
    assert_eq!(errors.0.len(), 2);
    // Nothing changed, not even the namespace key.
    let after = registry.snapshot(NS).await.unwrap();
    assert_eq!(after.services, before.services);
    assert_eq!(registry.get_namespace(NS).await.unwrap().revision, record.revision);

    // Replacing a service with its own names is fine.
    let (_, outcome) = registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    assert_eq!(outcome, Outcome::Replaced);
    assert!(matches!(registry.get_service(NS, "billing").await, Err(Error::ServiceNotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_cannot_break_uniqueness() {
    let (registry, _dir) = registry();
    registry.put_namespace(NS).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry.put_service(NS, &format!("svc{i}"), spec("same", &format!("alias{i}"), 80)).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::Taken(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(registry.snapshot(NS).await.unwrap().services.len(), 1);
}

#[tokio::test]
async fn instances_belong_to_a_service_and_go_with_it() {
    let (registry, _dir) = registry();
    registry.put_namespace(NS).await.unwrap();
    let e =
        registry.put_instance(NS, "payment", "t1", registration(Health::Healthy, None)).await.unwrap_err();
    assert!(matches!(e, Error::ServiceNotFound { .. }), "{e}");
    registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    let (i, outcome) =
        registry.put_instance(NS, "payment", "t1", registration(Health::Healthy, None)).await.unwrap();
    assert_eq!((outcome, i.port_name.as_deref(), i.revision > 0), (Outcome::Created, Some("api"), true));
    let (_, outcome) =
        registry.put_instance(NS, "payment", "t1", registration(Health::Draining, None)).await.unwrap();
    assert_eq!(outcome, Outcome::Replaced);
    registry.put_instance(NS, "payment", "t2", registration(Health::Unhealthy, None)).await.unwrap();

    let healthy = registry.list_instances(NS, "payment", HealthFilter::HealthyOrElseAll).await.unwrap();
    assert_eq!(healthy.len(), 2, "none is healthy, so all");
    assert_eq!(registry.get_instance(NS, "payment", "t1").await.unwrap().health, Health::Draining);
    registry.delete_instance(NS, "payment", "t2").await.unwrap();
    assert!(matches!(
        registry.delete_instance(NS, "payment", "t2").await,
        Err(Error::InstanceNotFound { .. })
    ));

    registry.delete_service(NS, "payment").await.unwrap();
    let snapshot = registry.snapshot(NS).await.unwrap();
    assert!(snapshot.services.is_empty() && snapshot.instances.is_empty(), "{snapshot:?}");
}

#[tokio::test]
async fn an_instance_on_a_lease_goes_when_the_lease_does() {
    let (registry, _dir) = registry();
    registry.put_namespace(NS).await.unwrap();
    registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    let lease = registry.grant_lease(30).await.unwrap();
    let (i, _) =
        registry.put_instance(NS, "payment", "t1", registration(Health::Healthy, Some(lease))).await.unwrap();
    assert_eq!(i.lease, Some(lease));
    assert_eq!(registry.get_instance(NS, "payment", "t1").await.unwrap().lease, Some(lease));
    registry.renew_lease(lease).await.unwrap();
    registry.revoke_lease(lease).await.unwrap();
    assert!(registry.list_instances(NS, "payment", HealthFilter::All).await.unwrap().is_empty());
    let e = registry
        .put_instance(NS, "payment", "t1", registration(Health::Healthy, Some(lease)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseNotFound(l) if l == lease), "{e}");
    assert!(matches!(registry.grant_lease(0).await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn a_snapshot_follows_a_watch() {
    let (registry, _dir) = registry();
    registry.put_namespace(NS).await.unwrap();
    registry.put_service(NS, "payment", spec("payment", "payment", 80)).await.unwrap();
    registry.put_instance(NS, "payment", "t1", registration(Health::Healthy, None)).await.unwrap();
    let mut followed = registry.snapshot(NS).await.unwrap();
    let mut watch = registry.store().watch(&watch_prefix(NS), followed.revision).await.unwrap();

    registry.put_service(NS, "billing", spec("billing", "billing", 80)).await.unwrap();
    registry.put_instance(NS, "billing", "b1", registration(Health::Starting, None)).await.unwrap();
    registry.put_instance(NS, "payment", "t2", registration(Health::Healthy, None)).await.unwrap();
    registry.delete_service(NS, "payment").await.unwrap();

    let fresh = registry.snapshot(NS).await.unwrap();
    // One revision may carry several events (a service and its instances): read until the
    // watch has been quiet for a while, not merely until the revision is reached.
    while let Ok(event) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        followed.apply(&event.unwrap().unwrap()).unwrap();
    }
    assert_eq!(followed, fresh);
    assert_eq!(fresh.services.keys().collect::<Vec<_>>(), ["billing"]);
    assert_eq!(fresh.instances_of("billing").count(), 1);
}
