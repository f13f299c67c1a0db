//! The int8 precision's calibration: one f32 pass over fixed sentences when a model loads,
//! recording each linear layer's largest input per feature, from which the int8 weights are
//! smoothed (`cpu/smooth.rs`). Fixed text keeps a model's int8 weights the same on every load;
//! the sentences span scripts, registers, numbers and code, like the traffic an embedding
//! service sees. None of them is in the fidelity set (`tests/fixtures/eval`).

use std::sync::Arc;

use trident_core::Modes;

use crate::checkpoint::Checkpoint;
use crate::cpu::{CpuBackend, CpuPrecision, Recorder, Smoothing};
use crate::encoder::Encoder;
use crate::error::ModelError;
use crate::tokenizer::Tokenizer;

/// The calibration sentences.
pub const SENTENCES: &[&str] = &[
    "The Eiffel Tower was completed in 1889 and is the most visited paid monument in the world.",
    "Der Fluss fließt durch die alte Stadt, vorbei an Kirchen und Brücken aus dem Mittelalter.",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "Kafka consumer groups rebalance partitions when a member joins or leaves the group.",
    "def add(a, b):\n    return a + b  # a tiny Python function",
    "¿Cuál es la capital de Argentina y cuántas personas viven allí?",
    "La photosynthèse transforme la lumière du soleil en énergie chimique stockée dans les sucres.",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "ما هي أطول سلسلة جبال في العالم؟",
    "Il treno per Milano parte alle otto e mezza dal binario tre.",
    "Hoe laat gaat de winkel vanavond dicht?",
    "서울은 대한민국의 수도이며 한강이 도시를 가로지른다.",
    "What is the boiling point of water at 3,000 metres above sea level?",
    "A vaccine trains the immune system to recognise a pathogen without causing the disease, \
     which is why most vaccines are given before any exposure and some need booster doses.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "Warszawa jest największym miastem w Polsce.",
    "हिमालय दुनिया की सबसे ऊंची पर्वत श्रृंखला है।",
    "Stock markets fell 3.2% on Tuesday after the central bank raised interest rates to 5.25%.",
    "O Brasil é o maior país da América do Sul e fala português.",
    "Türkiye'nin başkenti Ankara'dır, en kalabalık şehri ise İstanbul'dur.",
    "SELECT id, title FROM documents WHERE updated_at > '2024-01-01' ORDER BY id LIMIT 10;",
    "Vietnam nằm ở Đông Nam Á và có đường bờ biển dài hơn ba nghìn kilômét.",
    "The committee will review the proposal, ask the authors for revisions, and publish its \
     decision in March; until then the current rules stay in force for every member state.",
];

/// Runs the calibration sentences through `ckpt` at f32 on `threads` threads and returns the
/// smoothing for an int8 load of the same checkpoint.
pub fn int8_smoothing(
    ckpt: &Checkpoint,
    tokenizer: &Tokenizer,
    threads: usize,
) -> Result<Arc<Smoothing>, ModelError> {
    let recorder = Arc::new(Recorder::default());
    let backend =
        CpuBackend::with_precision(threads, CpuPrecision::F32).recording(recorder.clone());
    let mut enc = Encoder::new(ckpt, backend)?;
    enc.set_special_ids(tokenizer.special_ids());
    let cfg = enc.config();
    let max = cfg.max_position_embeddings.saturating_sub(cfg.pad_token_id as usize + 1);
    let docs = SENTENCES.iter().map(|t| tokenizer.encode(t, max)).collect::<Result<Vec<_>, _>>()?;
    enc.encode(&docs, Modes::ALL)?;
    Ok(Arc::new(recorder.finish()))
}
