//! crawler-operator: a distributed web crawler whose control plane is Kubernetes.
pub mod controller;
pub mod crd;
pub mod leader;
pub mod scheduler;
