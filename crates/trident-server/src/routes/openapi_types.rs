//! Schemas the derive cannot infer (documentation types only).

use std::borrow::Cow;

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
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
