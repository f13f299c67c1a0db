//! The real 250,002-piece XLM-R / BGE-M3 tokenizer.

use std::path::PathBuf;

use trident_model::Tokenizer;

fn xlmr() -> Tokenizer {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/xlmr/tokenizer.json");
    Tokenizer::from_file(&p).expect("real tokenizer loads")
}

#[test]
fn hello_world() {
    let t = xlmr();
    let d = t.encode("Hello world", 8192).unwrap();
    assert_eq!(d.ids, vec![0, 35378, 8999, 2]);
    assert!(!d.truncated);
    assert_eq!(t.vocab_size(), 250002);
    let s = t.special_ids();
    assert_eq!((s.cls, s.pad, s.eos, s.unk), (0, 1, 2, 3));
}

#[test]
fn truncation_at_8192_keeps_eos() {
    let t = xlmr();
    let text = "Hello world, this is a long document. ".repeat(1500);
    let full = t.encode(&text, 0).unwrap();
    assert!(full.ids.len() > 8192);
    let d = t.encode(&text, 8192).unwrap();
    assert!(d.truncated);
    assert_eq!(d.ids.len(), 8192);
    assert_eq!(d.ids[0], 0);
    assert_eq!(*d.ids.last().unwrap(), 2);
    assert_eq!(d.ids[..8191], full.ids[..8191]);
    // max_length 2 holds only the specials; 1 cannot hold them, so nothing is truncated.
    assert_eq!(t.encode(&text, 2).unwrap().ids, vec![0, 2]);
    assert_eq!(t.encode(&text, 1).unwrap().ids.len(), full.ids.len());
}
