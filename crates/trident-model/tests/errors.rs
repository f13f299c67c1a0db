//! Broken model directories give errors naming the file / tensor at fault, never a panic.

mod common;

use std::collections::HashMap;

use common::{copy_without, tiny};
use trident_model::{Checkpoint, ModelError, Tokenizer};

fn open_err(dir: &std::path::Path) -> ModelError {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn each_missing_file_is_named() {
    for file in ["config.json", "colbert_linear.pt", "sparse_linear.pt"] {
        let dir = copy_without(&[file]);
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::MissingFile { .. }), "{file}: {e}");
        assert!(e.to_string().contains(file), "{file}: {e}");
    }
    let dir = copy_without(&["model.safetensors", "pytorch_model.bin"]);
    let e = open_err(dir.path());
    assert!(e.to_string().contains("model.safetensors or pytorch_model.bin"), "{e}");

    let dir = copy_without(&["tokenizer.json"]);
    let e = Tokenizer::from_dir(dir.path()).err().expect("no tokenizer");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let e = trident_model::open_dir(dir.path()).err().expect("open_dir needs the tokenizer");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let e = open_err(&tiny().join("no-such-dir"));
    assert!(e.to_string().contains("no-such-dir"), "{e}");
}

#[test]
fn truncated_weight_files_are_corrupt() {
    for file in ["model.safetensors", "colbert_linear.pt", "pytorch_model.bin"] {
        let dir = copy_without(&[]);
        if file == "pytorch_model.bin" {
            std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        }
        let p = dir.path().join(file);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::CorruptFile { .. }), "{file}: {e}");
        assert!(e.to_string().contains(file), "{file}: {e}");
    }
}

#[test]
fn garbage_config_is_named() {
    let dir = copy_without(&[]);
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 32}"#).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.to_string().contains("config.json") && e.to_string().contains("num_hidden_layers"),
        "{e}"
    );
}

/// Rewrites model.safetensors with one tensor replaced (or removed when `shape` is None).
fn rewrite_tensor(dir: &std::path::Path, name: &str, shape: Option<Vec<usize>>) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, v) in st.tensors() {
        if n == name {
            if let Some(s) = &shape {
                let len: usize = s.iter().product();
                owned.push((n.clone(), v.dtype(), s.clone(), vec![0u8; len * 4]));
            }
        } else {
            owned.push((n.clone(), v.dtype(), v.shape().to_vec(), v.data().to_vec()));
        }
    }
    let views: HashMap<String, safetensors::tensor::TensorView> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())
        })
        .collect();
    let out = safetensors::serialize(&views, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let dir = copy_without(&[]);
    let name = "encoder.layer.1.intermediate.dense.weight";
    rewrite_tensor(dir.path(), name, Some(vec![63, 32]));
    let e = open_err(dir.path());
    let msg = e.to_string();
    assert!(matches!(e, ModelError::Shape { .. }), "{msg}");
    assert!(
        msg.contains(name)
            && msg.contains("[63, 32]")
            && msg.contains("[64, 32]")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_without(&[]);
    let name = "encoder.layer.0.attention.self.key.bias";
    rewrite_tensor(dir.path(), name, None);
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains(name) && e.to_string().contains("model.safetensors"), "{e}");
}
