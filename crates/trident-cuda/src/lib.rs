//! trident-cuda
