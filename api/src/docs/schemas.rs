//! Schemas the OpenAPI document gives request fields whose Rust types say
//! less than the server checks: addresses (`format: email`), recipient
//! lists and scopes. Only the document uses them; the handlers validate
//! the same rules in [`crate::validate`] and [`crate::send_request`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::json;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::routes::lists::MemberInput;

/// An email address (at most 254 characters), as
/// [`EmailAddress::parse`](platform::mail::EmailAddress::parse) accepts it.
pub struct Address;

impl PartialSchema for Address {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(254))
            .examples([json!("user@example.com")])
            .into()
    }
}

impl ToSchema for Address {
    fn name() -> Cow<'static, str> {
        "EmailAddress".into()
    }
}

/// One address, or a list of `min` to 50 (to, cc and bcc together hold at
/// most 50).
fn recipients(min: usize) -> RefOr<Schema> {
    let list = ArrayBuilder::new()
        .items(Ref::from_schema_name(Address::name()))
        .min_items(Some(min))
        .max_items(Some(50));
    OneOfBuilder::new()
        .item(Ref::from_schema_name(Address::name()))
        .item(list)
        .description(Some("One address, or a list of them."))
        .into()
}

/// `to`: one address or a list of 1 to 50.
pub struct To;

impl PartialSchema for To {
    fn schema() -> RefOr<Schema> {
        recipients(1)
    }
}

impl ToSchema for To {
    fn name() -> Cow<'static, str> {
        "Recipients".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Address::name().into(), Address::schema()));
    }
}

/// `cc` and `bcc`: one address or a list of up to 50.
pub struct Copies;

impl PartialSchema for Copies {
    fn schema() -> RefOr<Schema> {
        recipients(0)
    }
}

impl ToSchema for Copies {
    fn name() -> Cow<'static, str> {
        "CopyRecipients".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Address::name().into(), Address::schema()));
    }
}

/// A template variable: an identifier of letters, digits and `_` (at most 64).
pub struct VariableName;

impl PartialSchema for VariableName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))
            .examples([json!("name")])
            .into()
    }
}

impl ToSchema for VariableName {}

/// What a campaign does about times missed while no scheduler ran.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum MissedRunPolicy {
    Skip,
    RunOnce,
}

/// The variables of a template: at most 100, each declared once.
pub struct VariableNames;

impl PartialSchema for VariableNames {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(VariableName::name()))
            .max_items(Some(100))
            .unique_items(true)
            .into()
    }
}

impl ToSchema for VariableNames {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((VariableName::name().into(), VariableName::schema()));
    }
}

/// A JSON array of `min` to `max` entries of any JSON value, which the
/// server checks one by one as an `item` and reports by index (an entry
/// that is not an `item` is refused in the answer, not the request).
fn entries(item: &str, min: usize, max: usize) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(SchemaType::AnyValue))
        .min_items(Some(min))
        .max_items(Some(max))
        .description(Some(format!(
            "{min} to {max} entries, each a `{item}`; an entry that is not \
             one is refused by index in the answer."
        )))
        .into()
}

/// The body of `POST /api/v1/admin/email-accounts/import`.
pub struct AccountImport;

impl PartialSchema for AccountImport {
    fn schema() -> RefOr<Schema> {
        entries("CreateEmailAccount", 1, 1000)
    }
}

impl ToSchema for AccountImport {}

/// The body of `POST /api/v1/lists/{id}/members`: 1 to 100,000 members,
/// each of the `MemberInput` shape (else the request is refused); an
/// address that is not one is refused by index in the answer.
pub struct MemberImport;

impl PartialSchema for MemberImport {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(MemberInput::name()))
            .min_items(Some(1))
            .max_items(Some(100_000))
            .into()
    }
}

impl ToSchema for MemberImport {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((MemberInput::name().into(), MemberInput::schema()));
    }
}

/// A send's `metadata`: at most 20 string entries, keys 1 to 40 of
/// `A-Z a-z 0-9 _ - . :`, values at most 500 characters without control
/// characters ([`platform::mail::rules::metadata`]).
pub struct Metadata;

impl PartialSchema for Metadata {
    fn schema() -> RefOr<Schema> {
        let value = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(platform::mail::rules::MAX_METADATA_VALUE))
            .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]*$"));
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[A-Za-z0-9_.:-]{1,40}$"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(key))
            .additional_properties(Some(value))
            .max_properties(Some(platform::mail::rules::MAX_METADATA_ENTRIES))
            .description(Some(
                "Your own labels (an order id, a tenant), stored with the message and echoed in \
                 it and in its webhook events.",
            ))
            .examples([json!({"order_id": "A-1042", "tenant": "shop-eu"})])
            .into()
    }
}

impl ToSchema for Metadata {
    fn name() -> Cow<'static, str> {
        "Metadata".into()
    }
}
