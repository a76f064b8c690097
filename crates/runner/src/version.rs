//! One version of a service: the validated spec a task starts from.

use std::sync::Arc;

use tether_model::spec::{Service, ServiceSpec, TaskDefinition};

/// A service's spec, validated.
#[derive(Debug)]
pub struct Version {
    pub service: Service,
    pub task: TaskDefinition,
    /// What a task of this version runs, as text: two versions whose tasks would be the same
    /// have the same fingerprint, so changing only `desiredCount` or a client alias rolls
    /// nothing.
    pub fingerprint: String,
}

impl Version {
    /// `None` for a service without tasks to run (no command, or an external service).
    pub fn new(name: &str, namespace: &str, spec: ServiceSpec) -> Option<Arc<Self>> {
        let service = spec.validate(name, namespace).ok()?;
        let task = service.task.clone()?;
        let fingerprint = tether_model::rollout::fingerprint(&service)?;
        Some(Arc::new(Self { service, task, fingerprint }))
    }

    pub fn desired_count(&self) -> u32 {
        self.service.desired_count
    }

    /// The port mappings a task registers an instance for: those published to the mesh or to
    /// the host.
    pub fn served_ports(&self) -> impl Iterator<Item = &tether_model::spec::Port> {
        self.service.ports.iter().filter(|p| {
            self.service.discovery_for_port(&p.name).is_some()
                || self.service.publish.iter().any(|x| x.port_name == p.name)
        })
    }
}
