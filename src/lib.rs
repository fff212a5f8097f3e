//! crawler-operator: a distributed web crawler whose control plane is Kubernetes.

pub mod crawl;
