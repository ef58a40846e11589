//! The body of `POST /api/v1/messages/email/send`, and its validation into
//! a message ready to record.

use base64::Engine;
use chrono::{DateTime, Utc};
use platform::db::attachments::Attachment;
use platform::db::messages::NewMessage;
use platform::db::templates::{self, Template};
use platform::mail::rules;
use platform::mail::unsubscribe::Scope;
use platform::tasks::Recipients;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::templating::{self, Rendered};
use crate::validate;

/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// How far ahead `send_at` may be.
pub const MAX_SCHEDULE_DAYS: i64 = 365;

/// One file attached to a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    /// File name shown to the recipient (1 to 255 characters, no path
    /// separators or control characters; trimmed).
    #[schema(
        example = "invoice.pdf",
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F/\\]*[^\s\u0000-\u001F\u007F-\u009F/\\][^\u0000-\u001F\u007F-\u009F/\\]*$"
    )]
    pub filename: String,
    /// MIME type, `type/subtype` (any case).
    #[schema(
        example = "application/pdf",
        pattern = r"^\s*[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}\s*$"
    )]
    pub content_type: String,
    /// The file, base64 (standard alphabet, padded, canonical). At most
    /// ATTACHMENT_MAX_SIZE bytes decoded; the whole email at most EMAIL_MAX_SIZE.
    #[schema(
        content_encoding = "base64",
        pattern = r"^\s*(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?\s*$"
    )]
    pub content: String,
}

/// An email to send: either `subject` and `content`, or a template
/// (`template_id` or `template` by name) and its `variables`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "user@example.com", "subject": "Welcome", "content": "<p>Hello</p>"}))]
pub struct SendEmailRequest {
    /// Recipient address, or a list of them.
    #[schema(value_type = crate::docs::schemas::To)]
    pub to: Recipients,
    #[schema(value_type = Option<crate::docs::schemas::Copies>)]
    pub cc: Option<Recipients>,
    #[schema(value_type = Option<crate::docs::schemas::Copies>)]
    pub bcc: Option<Recipients>,
    /// At most 998 characters, no control characters (so no line breaks).
    /// Required without a template.
    #[schema(
        max_length = 998,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub subject: Option<String>,
    /// HTML body, not blank. Required without a template.
    #[schema(pattern = r"\S")]
    pub content: Option<String>,
    /// Plain-text alternative; derived from the HTML when absent.
    pub text: Option<String>,
    #[schema(value_type = Option<crate::docs::schemas::Address>)]
    pub reply_to: Option<String>,
    /// Display name for From (at most 128 characters, no control
    /// characters); defaults to the sending account's.
    #[schema(max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub from_name: Option<String>,
    /// A template to render instead of subject/content.
    pub template_id: Option<Uuid>,
    /// A template by name (instead of `template_id`).
    pub template: Option<String>,
    /// Exactly the template's declared variables.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
    /// At most 10 files.
    #[schema(max_items = 10)]
    pub attachments: Option<Vec<AttachmentRequest>>,
    /// RFC 3339 time to send at (future, at most 365 days ahead): the message
    /// is recorded as `scheduled` and released by the scheduler.
    #[schema(example = "2030-01-01T09:00:00Z", format = DateTime)]
    pub send_at: Option<String>,
    /// Groups messages for queries and statistics.
    pub campaign_id: Option<Uuid>,
    #[schema(value_type = Option<crate::docs::schemas::Metadata>)]
    pub metadata: Option<platform::db::messages::Metadata>,
    /// `true`: the email carries a one-click unsubscribe link
    /// (`List-Unsubscribe`, RFC 8058) that suppresses the recipient for
    /// all mail. Needs exactly one recipient (one `to`, no cc or bcc).
    pub list_unsubscribe: Option<bool>,
}

/// A template named by id or by name.
#[derive(Debug, Clone, Copy)]
pub enum TemplateRef<'a> {
    Id(Uuid),
    Name(&'a str),
}

impl<'a> TemplateRef<'a> {
    /// The template a body names with `template_id` or `template` (a
    /// send's own, or a batch's shared one), if any; naming both is a 422.
    pub fn from_fields(id: Option<Uuid>, name: Option<&'a str>) -> Result<Option<Self>, ApiError> {
        match (id, name) {
            (Some(_), Some(_)) => Err(ApiError::validation(
                "template",
                "give template_id or template, not both",
            )),
            (Some(id), None) => Ok(Some(TemplateRef::Id(id))),
            (None, Some(name)) => Ok(Some(TemplateRef::Name(name))),
            (None, None) => Ok(None),
        }
    }
}

/// A request checked and ready to record.
#[derive(Debug, Clone)]
pub struct AcceptedEmail {
    pub new: NewMessage,
    pub attachments: Vec<Attachment>,
    pub send_at: Option<DateTime<Utc>>,
    pub campaign_id: Option<Uuid>,
}

/// Limits that apply to each email.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub email_max_size: usize,
    pub attachment_max_size: usize,
}

impl SendEmailRequest {
    /// Checks what the request names in the database, as `owner` sees it
    /// (see [`crate::auth::Principal::owner_filter`]): its campaign must
    /// exist and be visible, and its template (or `shared`, when the request
    /// has neither its own template nor content) is rendered with its
    /// variables.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn resolve(
        &self,
        pool: &PgPool,
        owner: Option<Uuid>,
        shared: Option<TemplateRef<'_>>,
    ) -> Result<Option<Rendered>, ApiError> {
        if let Some(campaign_id) = self.campaign_id {
            check_campaign(pool, owner, campaign_id).await?;
        }
        self.render(pool, owner, shared).await
    }

    async fn render(
        &self,
        pool: &PgPool,
        owner: Option<Uuid>,
        shared: Option<TemplateRef<'_>>,
    ) -> Result<Option<Rendered>, ApiError> {
        let own = TemplateRef::from_fields(self.template_id, self.template.as_deref())?;
        let chosen = match own {
            Some(r) => Some(r),
            None if self.subject.is_none() && self.content.is_none() => shared,
            None => None,
        };
        let Some(reference) = chosen else {
            if self.variables.is_some() {
                return Err(ApiError::validation(
                    "variables",
                    "variables are only for templated sends",
                ));
            }
            return Ok(None);
        };
        if self.subject.is_some() || self.content.is_some() || self.text.is_some() {
            return Err(ApiError::validation(
                if self.subject.is_some() {
                    "subject"
                } else {
                    "content"
                },
                "subject, content and text come from the template; do not send them with one",
            ));
        }
        let template = load_template(pool, owner, reference).await?;
        let variables = self.variables.clone().unwrap_or_default();
        templating::render(template, variables).await.map(Some)
    }

    pub fn validate(
        &self,
        api_key_id: Uuid,
        limits: Limits,
        rendered: Option<Rendered>,
    ) -> Result<AcceptedEmail, ApiError> {
        // The rules every email keeps to (`platform::mail::rules`, which
        // the worker applies to Python producers' sends too), checked in
        // their order with the attachments between.
        let (to, cc, bcc) = rules::recipients(
            self.to.as_slice(),
            listed(self.cc.as_ref()),
            listed(self.bcc.as_ref()),
        )?;
        let (subject, content, text) = match rendered {
            Some(r) => (r.subject, r.html, r.text),
            None => (
                self.subject
                    .clone()
                    .ok_or_else(|| ApiError::validation("subject", "subject is required"))?,
                self.content
                    .clone()
                    .ok_or_else(|| ApiError::validation("content", "content is required"))?,
                self.text.clone(),
            ),
        };
        let (subject, size) =
            rules::subject_and_body(&subject, &content, text.as_deref(), limits.email_max_size)?;
        let attachments = self.attachments(limits, size)?;
        let reply_to = rules::reply_to(self.reply_to.as_deref())?;
        let from_name = rules::from_name(self.from_name.as_deref())?;
        let send_at = self.send_at.as_deref().map(parse_send_at).transpose()?;
        let metadata = rules::metadata(self.metadata.as_ref())?;
        let unsubscribe_scope = self.unsubscribe_scope(&to, &cc, &bcc)?;
        Ok(AcceptedEmail {
            new: NewMessage {
                id: Uuid::now_v7(),
                task_id: Uuid::new_v4().to_string(),
                api_key_id: Some(api_key_id),
                to,
                cc,
                bcc,
                reply_to,
                from_name,
                subject,
                html_body: content,
                text_body: text,
                metadata,
                unsubscribe_scope,
            },
            attachments,
            send_at,
            campaign_id: self.campaign_id,
        })
    }

    /// The scope of the email's unsubscribe link, if it asked for one. The
    /// link names one address, so an email with several recipients cannot
    /// have one (each would hold a link that unsubscribes another).
    fn unsubscribe_scope(
        &self,
        to: &[String],
        cc: &[String],
        bcc: &[String],
    ) -> Result<Option<Scope>, ApiError> {
        if self.list_unsubscribe != Some(true) {
            return Ok(None);
        }
        if to.len() != 1 || !cc.is_empty() || !bcc.is_empty() {
            return Err(ApiError::validation(
                "list_unsubscribe",
                "list_unsubscribe needs exactly one recipient (one to, no cc or bcc)",
            ));
        }
        Ok(Some(Scope::Global))
    }

    fn attachments(&self, limits: Limits, body_size: usize) -> Result<Vec<Attachment>, ApiError> {
        let list = self.attachments.as_deref().unwrap_or_default();
        if list.len() > MAX_ATTACHMENTS {
            return Err(ApiError::validation(
                "attachments",
                format!("at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        let mut total = body_size;
        let mut out = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            let field = |name: &str| format!("attachments[{i}].{name}");
            let filename = validate::header_text(&field("filename"), &a.filename, true, 255)?;
            if filename.contains(['/', '\\']) {
                return Err(ApiError::validation(
                    field("filename"),
                    "filename must not contain path separators",
                ));
            }
            let content_type = a.content_type.trim().to_ascii_lowercase();
            if !is_mime_type(&content_type) {
                return Err(ApiError::validation(
                    field("content_type"),
                    "content_type must be a MIME type such as application/pdf",
                ));
            }
            // Decoded size, estimated before decoding so a huge file is refused cheaply.
            let estimate = a.content.len() / 4 * 3;
            let max = limits.attachment_max_size;
            if estimate > max + 2 {
                return Err(too_large_attachment(i, estimate, max));
            }
            let content = base64::engine::general_purpose::STANDARD
                .decode(a.content.trim())
                .map_err(|_| {
                    ApiError::invalid(
                        "invalid_attachment",
                        field("content"),
                        "content must be base64 (standard alphabet, padded)",
                    )
                })?;
            if content.len() > max {
                return Err(too_large_attachment(i, content.len(), max));
            }
            total += content.len();
            if total > limits.email_max_size {
                return Err(ApiError::TooLarge {
                    code: "email_too_large",
                    message: format!(
                        "the email with its attachments is over EMAIL_MAX_SIZE ({} bytes)",
                        limits.email_max_size
                    ),
                });
            }
            out.push(Attachment {
                filename,
                content_type,
                content,
            });
        }
        Ok(out)
    }
}

fn listed(recipients: Option<&Recipients>) -> &[String] {
    recipients.map_or(&[][..], Recipients::as_slice)
}

fn too_large_attachment(index: usize, size: usize, max: usize) -> ApiError {
    ApiError::TooLarge {
        code: "attachment_too_large",
        message: format!(
            "attachments[{index}] is {size} bytes; the limit (ATTACHMENT_MAX_SIZE) is {max}"
        ),
    }
}

fn is_mime_type(raw: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    raw.split_once('/')
        .is_some_and(|(t, sub)| token(t) && token(sub))
}

fn parse_send_at(raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            ApiError::invalid(
                "invalid_send_at",
                "send_at",
                "send_at must be an RFC 3339 time, e.g. 2030-01-01T09:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let now = Utc::now();
    if at <= now {
        return Err(ApiError::invalid(
            "invalid_send_at",
            "send_at",
            "send_at must be in the future",
        ));
    }
    if at > now + chrono::Duration::days(MAX_SCHEDULE_DAYS) {
        return Err(ApiError::invalid(
            "invalid_send_at",
            "send_at",
            format!("send_at must be at most {MAX_SCHEDULE_DAYS} days ahead"),
        ));
    }
    Ok(at)
}

/// The template `reference` names, if `owner` may see it; another key's
/// template is as unknown as one that does not exist.
#[tracing::instrument(level = "debug", skip_all, fields(template = ?reference))]
pub async fn load_template(
    executor: impl PgExecutor<'_>,
    owner: Option<Uuid>,
    reference: TemplateRef<'_>,
) -> Result<Template, ApiError> {
    let (found, field) = match reference {
        TemplateRef::Id(id) => (templates::get(executor, id, owner).await?, "template_id"),
        TemplateRef::Name(name) => (
            templates::find_by_name(executor, name, owner).await?,
            "template",
        ),
    };
    found.ok_or_else(|| {
        ApiError::invalid("unknown_template", field, "no template by this id or name")
    })
}

/// A send may name a campaign only if the key may see it: campaigns are
/// admin resources, so for other keys every campaign id is unknown (and a
/// key cannot slip its messages into an admin campaign's figures).
async fn check_campaign(pool: &PgPool, owner: Option<Uuid>, id: Uuid) -> Result<(), ApiError> {
    let exists = owner.is_none()
        && sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)")
            .bind(id)
            .fetch_one(pool)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "unknown_campaign",
            "campaign_id",
            "no campaign by this id",
        ))
    }
}
