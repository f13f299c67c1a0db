//! trident-cluster
