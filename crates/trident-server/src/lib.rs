//! trident-server
