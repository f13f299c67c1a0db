//! Schemas the derive cannot infer (documentation types only).

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, RefBuilder, Schema, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// `"text"` or `["text", ...]`.
pub struct TextsSchema;

impl PartialSchema for TextsSchema {
    fn schema() -> RefOr<Schema> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        OneOfBuilder::new()
            .item(text())
            .item(ArrayBuilder::new().items(text()))
            .description(Some("One text or a list of texts"))
            .into()
    }
}

impl ToSchema for TextsSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Texts")
    }
}

fn string_enum(values: &[&str], description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
}

/// `"f32" | "f16" | "bf16"`.
pub struct DenseEncodingSchema;

impl PartialSchema for DenseEncodingSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            &["f32", "f16", "bf16"],
            "Number type of the dense vector: values rounded to it (nearest even), written as \
             the shortest decimal of the rounded value",
        )
        .into()
    }
}

impl ToSchema for DenseEncodingSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DenseEncoding")
    }
}

/// `"f32" | "f16" | "binary"`.
pub struct ColbertEncodingSchema;

impl PartialSchema for ColbertEncodingSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            &["f32", "f16", "binary"],
            "Number type of the ColBERT rows: f32, f16 (rounded to nearest even), or binary \
             (one sign bit per dimension, 1 iff x > 0; each row a hex string of the packed \
             bits, most significant bit first, with `colbert_dim` beside)",
        )
        .into()
    }
}

impl ToSchema for ColbertEncodingSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ColbertEncoding")
    }
}

/// ColBERT rows: arrays of numbers, or hex strings of packed sign bits.
pub struct ColbertRowsSchema;

impl PartialSchema for ColbertRowsSchema {
    fn schema() -> RefOr<Schema> {
        let number = ObjectBuilder::new().schema_type(Type::Number);
        let hex = ObjectBuilder::new().schema_type(Type::String).description(Some(
            "The row's sign bits (1 iff x > 0), packed most significant bit first, in hex",
        ));
        OneOfBuilder::new()
            .item(ArrayBuilder::new().items(ArrayBuilder::new().items(number)))
            .item(ArrayBuilder::new().items(hex))
            .description(Some(
                "One vector per token after `<s>` (the final `</s>` included): arrays of \
                 numbers, or with `colbert_encoding` binary hex strings of `colbert_dim` bits",
            ))
            .into()
    }
}

impl ToSchema for ColbertRowsSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ColbertRows")
    }
}

/// One pair of `/score`: `[query, passage]`, or an object whose sides are texts or stored
/// results.
pub struct ScorePairSchema;

impl PartialSchema for ScorePairSchema {
    fn schema() -> RefOr<Schema> {
        let text = |d: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(d));
        let stored = |side: &str| {
            RefBuilder::new()
                .ref_location_from_schema_name("EmbeddingObject")
                .description(Some(format!(
                    "The {side} as a stored result instead of a text: the object `/embed` and \
                     `trident embed` return, in any encoding. Scored as stored: f16/bf16 values \
                     in f32 arithmetic; binary ColBERT rows make the other side's rows binary \
                     too (MaxSim of 1 − 2·Hamming/dim). It must hold dense, sparse and colbert \
                     of the model's dims"
                )))
                .build()
        };
        let object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("query", text("The query text (or give `query_embedding`)"))
            .property("query_embedding", stored("query"))
            .property("passage", text("The passage text (or give `passage_embedding`)"))
            .property("passage_embedding", stored("passage"))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .description(Some("Each side a text or a stored result (exactly one of the two)"));
        let texts = ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String))
            .min_items(Some(2))
            .max_items(Some(2))
            .description(Some("[query, passage]"));
        OneOfBuilder::new().item(texts).item(object).into()
    }
}

impl ToSchema for ScorePairSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ScorePair")
    }
}
